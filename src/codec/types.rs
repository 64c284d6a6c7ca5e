//! Enumerations of XL 10 (`GTM_MessageType`, `GTM_ResultType`, node types and
//! status codes). Values are facts of the wire protocol (protocol doc section 2).

/// `GTM_MessageType`: the 4-byte message type of a `C` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgType(pub i32);

impl MsgType {
    pub const TYPE_INVALID: MsgType = MsgType(0);
    pub const SYNC_STANDBY: MsgType = MsgType(1);
    pub const NODE_REGISTER: MsgType = MsgType(2);
    pub const BKUP_NODE_REGISTER: MsgType = MsgType(3);
    pub const NODE_UNREGISTER: MsgType = MsgType(4);
    pub const BKUP_NODE_UNREGISTER: MsgType = MsgType(5);
    pub const REGISTER_SESSION: MsgType = MsgType(6);
    pub const REPORT_XMIN: MsgType = MsgType(7);
    pub const BKUP_REPORT_XMIN: MsgType = MsgType(8);
    pub const NODE_LIST: MsgType = MsgType(9);
    pub const NODE_BEGIN_REPLICATION_INIT: MsgType = MsgType(10);
    pub const NODE_END_REPLICATION_INIT: MsgType = MsgType(11);
    pub const BEGIN_BACKUP: MsgType = MsgType(12);
    pub const END_BACKUP: MsgType = MsgType(13);
    pub const TXN_BEGIN: MsgType = MsgType(14);
    pub const BKUP_TXN_BEGIN: MsgType = MsgType(15);
    pub const TXN_BEGIN_GETGXID: MsgType = MsgType(16);
    pub const BKUP_TXN_BEGIN_GETGXID: MsgType = MsgType(17);
    pub const TXN_BEGIN_GETGXID_MULTI: MsgType = MsgType(18);
    pub const BKUP_TXN_BEGIN_GETGXID_MULTI: MsgType = MsgType(19);
    pub const TXN_START_PREPARED: MsgType = MsgType(20);
    pub const BKUP_TXN_START_PREPARED: MsgType = MsgType(21);
    pub const TXN_COMMIT: MsgType = MsgType(22);
    pub const BKUP_TXN_COMMIT: MsgType = MsgType(23);
    pub const TXN_COMMIT_MULTI: MsgType = MsgType(24);
    pub const BKUP_TXN_COMMIT_MULTI: MsgType = MsgType(25);
    pub const TXN_COMMIT_PREPARED: MsgType = MsgType(26);
    pub const BKUP_TXN_COMMIT_PREPARED: MsgType = MsgType(27);
    pub const TXN_PREPARE: MsgType = MsgType(28);
    pub const BKUP_TXN_PREPARE: MsgType = MsgType(29);
    pub const TXN_ROLLBACK: MsgType = MsgType(30);
    pub const BKUP_TXN_ROLLBACK: MsgType = MsgType(31);
    pub const TXN_ROLLBACK_MULTI: MsgType = MsgType(32);
    pub const BKUP_TXN_ROLLBACK_MULTI: MsgType = MsgType(33);
    pub const TXN_GET_GID_DATA: MsgType = MsgType(34);
    pub const TXN_GET_GXID: MsgType = MsgType(35);
    pub const BKUP_TXN_GET_GXID: MsgType = MsgType(36);
    pub const TXN_GET_NEXT_GXID: MsgType = MsgType(37);
    pub const TXN_GXID_LIST: MsgType = MsgType(38);
    pub const SNAPSHOT_GET: MsgType = MsgType(39);
    pub const SNAPSHOT_GET_MULTI: MsgType = MsgType(40);
    pub const SNAPSHOT_GXID_GET: MsgType = MsgType(41);
    pub const SEQUENCE_INIT: MsgType = MsgType(42);
    pub const BKUP_SEQUENCE_INIT: MsgType = MsgType(43);
    pub const SEQUENCE_GET_CURRENT: MsgType = MsgType(44);
    pub const SEQUENCE_GET_NEXT: MsgType = MsgType(45);
    pub const BKUP_SEQUENCE_GET_NEXT: MsgType = MsgType(46);
    pub const SEQUENCE_GET_LAST: MsgType = MsgType(47);
    pub const SEQUENCE_SET_VAL: MsgType = MsgType(48);
    pub const BKUP_SEQUENCE_SET_VAL: MsgType = MsgType(49);
    pub const SEQUENCE_RESET: MsgType = MsgType(50);
    pub const BKUP_SEQUENCE_RESET: MsgType = MsgType(51);
    pub const SEQUENCE_CLOSE: MsgType = MsgType(52);
    pub const BKUP_SEQUENCE_CLOSE: MsgType = MsgType(53);
    pub const SEQUENCE_RENAME: MsgType = MsgType(54);
    pub const BKUP_SEQUENCE_RENAME: MsgType = MsgType(55);
    pub const SEQUENCE_ALTER: MsgType = MsgType(56);
    pub const BKUP_SEQUENCE_ALTER: MsgType = MsgType(57);
    pub const SEQUENCE_LIST: MsgType = MsgType(58);
    pub const TXN_GET_STATUS: MsgType = MsgType(59);
    pub const TXN_GET_ALL_PREPARED: MsgType = MsgType(60);
    pub const TXN_BEGIN_GETGXID_AUTOVACUUM: MsgType = MsgType(61);
    pub const BKUP_TXN_BEGIN_GETGXID_AUTOVACUUM: MsgType = MsgType(62);
    pub const DATA_FLUSH: MsgType = MsgType(63);
    pub const BACKEND_DISCONNECT: MsgType = MsgType(64);
    pub const BARRIER: MsgType = MsgType(65);
    pub const BKUP_BARRIER: MsgType = MsgType(66);

    /// The XL name (`MSG_...`), or None for a value XL 10 does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "MSG_TYPE_INVALID",
            1 => "MSG_SYNC_STANDBY",
            2 => "MSG_NODE_REGISTER",
            3 => "MSG_BKUP_NODE_REGISTER",
            4 => "MSG_NODE_UNREGISTER",
            5 => "MSG_BKUP_NODE_UNREGISTER",
            6 => "MSG_REGISTER_SESSION",
            7 => "MSG_REPORT_XMIN",
            8 => "MSG_BKUP_REPORT_XMIN",
            9 => "MSG_NODE_LIST",
            10 => "MSG_NODE_BEGIN_REPLICATION_INIT",
            11 => "MSG_NODE_END_REPLICATION_INIT",
            12 => "MSG_BEGIN_BACKUP",
            13 => "MSG_END_BACKUP",
            14 => "MSG_TXN_BEGIN",
            15 => "MSG_BKUP_TXN_BEGIN",
            16 => "MSG_TXN_BEGIN_GETGXID",
            17 => "MSG_BKUP_TXN_BEGIN_GETGXID",
            18 => "MSG_TXN_BEGIN_GETGXID_MULTI",
            19 => "MSG_BKUP_TXN_BEGIN_GETGXID_MULTI",
            20 => "MSG_TXN_START_PREPARED",
            21 => "MSG_BKUP_TXN_START_PREPARED",
            22 => "MSG_TXN_COMMIT",
            23 => "MSG_BKUP_TXN_COMMIT",
            24 => "MSG_TXN_COMMIT_MULTI",
            25 => "MSG_BKUP_TXN_COMMIT_MULTI",
            26 => "MSG_TXN_COMMIT_PREPARED",
            27 => "MSG_BKUP_TXN_COMMIT_PREPARED",
            28 => "MSG_TXN_PREPARE",
            29 => "MSG_BKUP_TXN_PREPARE",
            30 => "MSG_TXN_ROLLBACK",
            31 => "MSG_BKUP_TXN_ROLLBACK",
            32 => "MSG_TXN_ROLLBACK_MULTI",
            33 => "MSG_BKUP_TXN_ROLLBACK_MULTI",
            34 => "MSG_TXN_GET_GID_DATA",
            35 => "MSG_TXN_GET_GXID",
            36 => "MSG_BKUP_TXN_GET_GXID",
            37 => "MSG_TXN_GET_NEXT_GXID",
            38 => "MSG_TXN_GXID_LIST",
            39 => "MSG_SNAPSHOT_GET",
            40 => "MSG_SNAPSHOT_GET_MULTI",
            41 => "MSG_SNAPSHOT_GXID_GET",
            42 => "MSG_SEQUENCE_INIT",
            43 => "MSG_BKUP_SEQUENCE_INIT",
            44 => "MSG_SEQUENCE_GET_CURRENT",
            45 => "MSG_SEQUENCE_GET_NEXT",
            46 => "MSG_BKUP_SEQUENCE_GET_NEXT",
            47 => "MSG_SEQUENCE_GET_LAST",
            48 => "MSG_SEQUENCE_SET_VAL",
            49 => "MSG_BKUP_SEQUENCE_SET_VAL",
            50 => "MSG_SEQUENCE_RESET",
            51 => "MSG_BKUP_SEQUENCE_RESET",
            52 => "MSG_SEQUENCE_CLOSE",
            53 => "MSG_BKUP_SEQUENCE_CLOSE",
            54 => "MSG_SEQUENCE_RENAME",
            55 => "MSG_BKUP_SEQUENCE_RENAME",
            56 => "MSG_SEQUENCE_ALTER",
            57 => "MSG_BKUP_SEQUENCE_ALTER",
            58 => "MSG_SEQUENCE_LIST",
            59 => "MSG_TXN_GET_STATUS",
            60 => "MSG_TXN_GET_ALL_PREPARED",
            61 => "MSG_TXN_BEGIN_GETGXID_AUTOVACUUM",
            62 => "MSG_BKUP_TXN_BEGIN_GETGXID_AUTOVACUUM",
            63 => "MSG_DATA_FLUSH",
            64 => "MSG_BACKEND_DISCONNECT",
            65 => "MSG_BARRIER",
            66 => "MSG_BKUP_BARRIER",
            _ => return None,
        })
    }
}

impl std::fmt::Display for MsgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({})", n, self.0),
            None => write!(f, "unknown ({})", self.0),
        }
    }
}

/// `GTM_ResultType`: the 4-byte result type of an `S` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultType(pub i32);

impl ResultType {
    pub const SYNC_STANDBY_RESULT: ResultType = ResultType(0);
    pub const NODE_REGISTER_RESULT: ResultType = ResultType(1);
    pub const NODE_UNREGISTER_RESULT: ResultType = ResultType(2);
    pub const REGISTER_SESSION_RESULT: ResultType = ResultType(3);
    pub const REPORT_XMIN_RESULT: ResultType = ResultType(4);
    pub const NODE_LIST_RESULT: ResultType = ResultType(5);
    pub const NODE_BEGIN_REPLICATION_INIT_RESULT: ResultType = ResultType(6);
    pub const NODE_END_REPLICATION_INIT_RESULT: ResultType = ResultType(7);
    pub const BEGIN_BACKUP_RESULT: ResultType = ResultType(8);
    pub const END_BACKUP_RESULT: ResultType = ResultType(9);
    pub const TXN_BEGIN_RESULT: ResultType = ResultType(10);
    pub const TXN_BEGIN_GETGXID_RESULT: ResultType = ResultType(11);
    pub const TXN_BEGIN_GETGXID_MULTI_RESULT: ResultType = ResultType(12);
    pub const TXN_PREPARE_RESULT: ResultType = ResultType(13);
    pub const TXN_START_PREPARED_RESULT: ResultType = ResultType(14);
    pub const TXN_COMMIT_PREPARED_RESULT: ResultType = ResultType(15);
    pub const TXN_COMMIT_RESULT: ResultType = ResultType(16);
    pub const TXN_COMMIT_MULTI_RESULT: ResultType = ResultType(17);
    pub const TXN_ROLLBACK_RESULT: ResultType = ResultType(18);
    pub const TXN_ROLLBACK_MULTI_RESULT: ResultType = ResultType(19);
    pub const TXN_GET_GID_DATA_RESULT: ResultType = ResultType(20);
    pub const TXN_GET_GXID_RESULT: ResultType = ResultType(21);
    pub const TXN_GET_NEXT_GXID_RESULT: ResultType = ResultType(22);
    pub const TXN_GXID_LIST_RESULT: ResultType = ResultType(23);
    pub const SNAPSHOT_GET_RESULT: ResultType = ResultType(24);
    pub const SNAPSHOT_GET_MULTI_RESULT: ResultType = ResultType(25);
    pub const SNAPSHOT_GXID_GET_RESULT: ResultType = ResultType(26);
    pub const SEQUENCE_INIT_RESULT: ResultType = ResultType(27);
    pub const SEQUENCE_GET_CURRENT_RESULT: ResultType = ResultType(28);
    pub const SEQUENCE_GET_NEXT_RESULT: ResultType = ResultType(29);
    pub const SEQUENCE_GET_LAST_RESULT: ResultType = ResultType(30);
    pub const SEQUENCE_SET_VAL_RESULT: ResultType = ResultType(31);
    pub const SEQUENCE_RESET_RESULT: ResultType = ResultType(32);
    pub const SEQUENCE_CLOSE_RESULT: ResultType = ResultType(33);
    pub const SEQUENCE_RENAME_RESULT: ResultType = ResultType(34);
    pub const SEQUENCE_ALTER_RESULT: ResultType = ResultType(35);
    pub const SEQUENCE_LIST_RESULT: ResultType = ResultType(36);
    pub const TXN_GET_STATUS_RESULT: ResultType = ResultType(37);
    pub const TXN_GET_ALL_PREPARED_RESULT: ResultType = ResultType(38);
    pub const TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT: ResultType = ResultType(39);
    pub const BARRIER_RESULT: ResultType = ResultType(40);

    /// The XL name (`...`), or None for a value XL 10 does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "SYNC_STANDBY_RESULT",
            1 => "NODE_REGISTER_RESULT",
            2 => "NODE_UNREGISTER_RESULT",
            3 => "REGISTER_SESSION_RESULT",
            4 => "REPORT_XMIN_RESULT",
            5 => "NODE_LIST_RESULT",
            6 => "NODE_BEGIN_REPLICATION_INIT_RESULT",
            7 => "NODE_END_REPLICATION_INIT_RESULT",
            8 => "BEGIN_BACKUP_RESULT",
            9 => "END_BACKUP_RESULT",
            10 => "TXN_BEGIN_RESULT",
            11 => "TXN_BEGIN_GETGXID_RESULT",
            12 => "TXN_BEGIN_GETGXID_MULTI_RESULT",
            13 => "TXN_PREPARE_RESULT",
            14 => "TXN_START_PREPARED_RESULT",
            15 => "TXN_COMMIT_PREPARED_RESULT",
            16 => "TXN_COMMIT_RESULT",
            17 => "TXN_COMMIT_MULTI_RESULT",
            18 => "TXN_ROLLBACK_RESULT",
            19 => "TXN_ROLLBACK_MULTI_RESULT",
            20 => "TXN_GET_GID_DATA_RESULT",
            21 => "TXN_GET_GXID_RESULT",
            22 => "TXN_GET_NEXT_GXID_RESULT",
            23 => "TXN_GXID_LIST_RESULT",
            24 => "SNAPSHOT_GET_RESULT",
            25 => "SNAPSHOT_GET_MULTI_RESULT",
            26 => "SNAPSHOT_GXID_GET_RESULT",
            27 => "SEQUENCE_INIT_RESULT",
            28 => "SEQUENCE_GET_CURRENT_RESULT",
            29 => "SEQUENCE_GET_NEXT_RESULT",
            30 => "SEQUENCE_GET_LAST_RESULT",
            31 => "SEQUENCE_SET_VAL_RESULT",
            32 => "SEQUENCE_RESET_RESULT",
            33 => "SEQUENCE_CLOSE_RESULT",
            34 => "SEQUENCE_RENAME_RESULT",
            35 => "SEQUENCE_ALTER_RESULT",
            36 => "SEQUENCE_LIST_RESULT",
            37 => "TXN_GET_STATUS_RESULT",
            38 => "TXN_GET_ALL_PREPARED_RESULT",
            39 => "TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT",
            40 => "BARRIER_RESULT",
            _ => return None,
        })
    }
}

impl std::fmt::Display for ResultType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({})", n, self.0),
            None => write!(f, "unknown ({})", self.0),
        }
    }
}

/// `GTM_PGXCNodeType` as sent in startup packets and node messages.
pub mod node_type {
    pub const GTM_PROXY: i32 = 1;
    pub const GTM_PROXY_POSTMASTER: i32 = 2;
    pub const COORDINATOR: i32 = 3;
    pub const DATANODE: i32 = 4;
    pub const GTM: i32 = 5;
    pub const DEFAULT: i32 = 6;
}

/// Status codes carried in results.
pub mod status {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = -1;
    pub const NOT_FOUND: i32 = 3;
    pub const DELAYED: i32 = 4;
}

/// Read-committed isolation, the only level XL backends send.
pub const ISOLATION_RC: i32 = 1;
/// `FirstNormalGlobalTransactionId`: GXIDs below it are special.
pub const FIRST_NORMAL_GXID: u32 = 3;

/// `GlobalTransactionIdIsNormal`.
#[inline]
pub fn gxid_is_normal(x: u32) -> bool {
    x >= FIRST_NORMAL_GXID
}

/// `GlobalTransactionIdPrecedes`: modulo-2^32 comparison between normal ids,
/// plain comparison when either is special.
#[inline]
pub fn gxid_precedes(a: u32, b: u32) -> bool {
    if !gxid_is_normal(a) || !gxid_is_normal(b) {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// `GlobalTransactionIdFollowsOrEquals`.
#[inline]
pub fn gxid_follows_or_equals(a: u32, b: u32) -> bool {
    if !gxid_is_normal(a) || !gxid_is_normal(b) {
        return a >= b;
    }
    (a.wrapping_sub(b) as i32) >= 0
}

/// `GlobalTransactionIdAdvance`: next id, skipping the special ones on wrap.
#[inline]
pub fn gxid_advance(x: u32) -> u32 {
    let n = x.wrapping_add(1);
    if n < FIRST_NORMAL_GXID {
        FIRST_NORMAL_GXID
    } else {
        n
    }
}

/// The GTM's fixed array size; no MULTI may carry more elements.
pub const MAX_GLOBAL_TRANSACTIONS: usize = 16384;
/// Characters of a global session id the GTM keeps (longer ids never match).
pub const MAX_SESSION_ID_LEN: usize = 64;
/// Size of the startup packet body (`GTM_StartupPacket`).
pub const STARTUP_BODY_LEN: usize = 76;
/// Length of the node-name field of the startup packet.
pub const SP_NODE_NAME: usize = 64;
