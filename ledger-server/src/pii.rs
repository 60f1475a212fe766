//! Personal data at rest: ID numbers, phones and token secrets are sealed with AES-256-GCM
//! (ring) under a key kept in the data dir (mode 0600), and ID numbers get a keyed HMAC tag
//! so duplicates are found without decrypting. Nothing here is ever logged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write;
use std::path::Path;

const PII_KEY_FILE: &str = "pii.key";

pub struct Pii {
    seal: LessSafeKey,
    tag: hmac::Key,
    rng: SystemRandom,
}

impl Pii {
    fn from_material(material: &[u8; 64]) -> anyhow::Result<Pii> {
        let unbound = UnboundKey::new(&AES_256_GCM, &material[..32])
            .map_err(|_| anyhow::anyhow!("bad AES key"))?;
        Ok(Pii {
            seal: LessSafeKey::new(unbound),
            tag: hmac::Key::new(hmac::HMAC_SHA256, &material[32..]),
            rng: SystemRandom::new(),
        })
    }

    /// Makes a new key file in `dir` (init).
    pub fn create(dir: &Path) -> anyhow::Result<Pii> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut material = [0u8; 64];
        SystemRandom::new()
            .fill(&mut material)
            .map_err(|_| anyhow::anyhow!("system random failed"))?;
        let path = dir.join(PII_KEY_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(hex::encode(material).as_bytes())?;
        file.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        Pii::from_material(&material)
    }

    pub fn open(dir: &Path) -> anyhow::Result<Pii> {
        let path = dir.join(PII_KEY_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut material = [0u8; 64];
        hex::decode_to_slice(text.trim(), &mut material)
            .map_err(|_| anyhow::anyhow!("{} is damaged", path.display()))?;
        Pii::from_material(&material)
    }

    /// base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("system random failed"))?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.seal
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    pub fn open_sealed(&self, sealed: &str) -> anyhow::Result<String> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| anyhow::anyhow!("sealed value is not base64"))?;
        if bytes.len() < NONCE_LEN {
            anyhow::bail!("sealed value too short");
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealed value does not authenticate"))?;
        Ok(String::from_utf8(plain.to_vec())?)
    }

    /// Hex HMAC-SHA256 tag of a value (equality without decryption).
    pub fn tag(&self, value: &str) -> String {
        hex::encode(hmac::sign(&self.tag, value.as_bytes()))
    }
}

/// `130102********1234`.
pub fn mask_id_number(first6: &str, last4: &str) -> String {
    format!("{first6}********{last4}")
}

/// `138****5678`.
pub fn mask_phone(first3: &str, last4: &str) -> String {
    format!("{first3}****{last4}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_and_tags_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let pii = Pii::create(dir.path()).unwrap();
        let sealed = pii.seal("13812345678").unwrap();
        assert!(!sealed.contains("13812345678"));
        let again = Pii::open(dir.path()).unwrap();
        assert_eq!(again.open_sealed(&sealed).unwrap(), "13812345678");
        assert_eq!(pii.tag("x"), again.tag("x"));
        assert_ne!(pii.seal("a").unwrap(), pii.seal("a").unwrap());
        let mut tampered = STANDARD.decode(&sealed).unwrap();
        tampered[20] ^= 1;
        assert!(again.open_sealed(&STANDARD.encode(tampered)).is_err());
        assert!(Pii::create(dir.path()).is_err());
        assert_eq!(mask_phone("138", "5678"), "138****5678");
        assert_eq!(mask_id_number("130102", "1234"), "130102********1234");
    }
}
