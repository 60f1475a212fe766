//! Reading the elder's card: the `CardSource` trait (a PC/SC reader, or a UID a phone read
//! over NFC itself), the contactless GET DATA command that asks a reader for the UID, and the
//! errors a worker at the door can act on.

use crate::uid::{CardUid, UidError};
use std::time::Duration;

/// PC/SC Part 3 "GET DATA" (pseudo-APDU for contactless readers): CLA FF, INS CA, P1 00 = the
/// UID, Le 00 = all of it.
pub const GET_UID_APDU: [u8; 5] = [0xFF, 0xCA, 0x00, 0x00, 0x00];
/// The status word of success.
pub const SW_OK: u16 = 0x9000;

/// Where a UID comes from.
pub trait CardSource {
    /// Waits up to `wait` for a card and reads its UID.
    fn read_uid(&mut self, wait: Duration) -> Result<CardUid, CardError>;

    /// Whether the worker must present a card (a reader), or the UID is already known.
    fn waits_for_card(&self) -> bool {
        true
    }
}

/// A UID read elsewhere (a phone's own NFC stack): `--card-uid`.
pub struct KnownUid(pub CardUid);

impl CardSource for KnownUid {
    fn read_uid(&mut self, _wait: Duration) -> Result<CardUid, CardError> {
        Ok(self.0.clone())
    }

    fn waits_for_card(&self) -> bool {
        false
    }
}

/// How to start the PC/SC daemon; part of every "not running" message.
pub const START_PCSCD_HINT: &str = "start it with `sudo pcscd` (or `sudo pcscd --foreground` \
     to watch its log; under systemd: `sudo systemctl start pcscd.socket`)";

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(
        "读卡服务 pcscd 未运行 / the PC/SC daemon pcscd is not running ({detail}): {START_PCSCD_HINT}"
    )]
    NoService { detail: String },
    #[error(
        "未连接读卡器 / no card reader is connected: plug it in (`card-reader readers` lists what PC/SC sees)"
    )]
    NoReader,
    #[error("没有名为 {name:?} 的读卡器 / no reader named {name:?}; connected: {available:?}")]
    UnknownReader {
        name: String,
        available: Vec<String>,
    },
    #[error("{secs} 秒内未检测到卡 / no card on the reader after {secs} s: hold the elder's card flat on the reader")]
    NoCard { secs: u64 },
    #[error("读卡时卡被移开 / the card was removed during the read: hold it still on the reader and swipe again")]
    Removed,
    #[error("卡片返回错误状态 {sw:04X} / the card answered status {sw:04X} to GET UID ({meaning}); try again, or use another reader")]
    Status { sw: u16, meaning: &'static str },
    #[error("读卡器应答异常 / malformed answer from the reader: {0}")]
    Malformed(String),
    #[error("读卡器错误 / PC/SC error: {0}")]
    Pcsc(String),
    #[error("此程序未编译读卡支持 / built without PC/SC support: pass the UID with --card-uid")]
    Disabled,
}

/// What a status word means, for the messages (ISO 7816-4 and PC/SC Part 3).
pub fn status_meaning(sw: u16) -> &'static str {
    match sw {
        0x6281 => "part of the data may be corrupted",
        0x6282 => "end of data reached before Le bytes",
        0x6300 => "the reader's operation failed (no card in the field?)",
        0x6700 => "wrong length",
        0x6882 => "secure messaging not supported",
        0x6982 => "security status not satisfied",
        0x6A81 => "function not supported by this card or reader",
        0x6A82 => "data not found",
        0x6B00 => "wrong parameters P1-P2",
        0x6D00 => "instruction not supported",
        0x6E00 => "class not supported: the reader does not take PC/SC pseudo-APDUs",
        _ if sw >> 8 == 0x6C => "wrong Le",
        _ => "unknown status",
    }
}

/// The UID out of a GET DATA response: data, then SW1 SW2 = 90 00.
pub fn parse_uid_response(response: &[u8]) -> Result<CardUid, CardError> {
    let Some(split) = response.len().checked_sub(2) else {
        return Err(CardError::Malformed(format!(
            "{} byte(s), shorter than a status word",
            response.len()
        )));
    };
    let (data, sw) = response.split_at(split);
    let sw = u16::from_be_bytes([sw[0], sw[1]]);
    if sw != SW_OK {
        return Err(CardError::Status {
            sw,
            meaning: status_meaning(sw),
        });
    }
    CardUid::from_bytes(data).map_err(|e: UidError| CardError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(response: &[u8], expected: &str) {
        let got = match parse_uid_response(response) {
            Ok(uid) => uid.to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            got.contains(expected),
            "{got:?} should contain {expected:?}"
        );
    }

    #[test]
    fn reads_the_uid_or_says_what_went_wrong() {
        check(
            &[0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6, 0x90, 0x00],
            "04A1B2C3D4E5F6",
        );
        check(&[0xDE, 0xAD, 0xBE, 0xEF, 0x90, 0x00], "DEADBEEF");
        check(&[0x6A, 0x81], "status 6A81");
        check(&[0x6A, 0x81], "function not supported");
        check(&[0x63, 0x00], "status 6300");
        check(&[0x6C, 0x07], "wrong Le");
        check(&[0x90], "shorter than a status word");
        check(&[], "shorter than a status word");
        check(&[0x90, 0x00], "0 bytes");
        check(&[0x01, 0x02, 0x03, 0x90, 0x00], "3 bytes");
    }

    #[test]
    fn every_card_error_names_a_way_forward() {
        let no_service = CardError::NoService {
            detail: "no socket".into(),
        };
        assert!(no_service.to_string().contains("pcscd --foreground"));
        assert!(CardError::NoCard { secs: 30 }.to_string().contains("30 s"));
        assert!(CardError::Removed.to_string().contains("removed"));
        assert!(CardError::Disabled.to_string().contains("--card-uid"));
    }
}
