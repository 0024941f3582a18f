//! Bearer tokens: 32 random bytes, written `bst_` and 64 hex digits. Only their SHA-256 is
//! kept (in the replicated state), so a copy of the data directory or of the log holds no
//! usable token.

use rand::RngCore;

/// The SHA-256 of a token's text.
pub type TokenHash = [u8; 32];

/// What every generated token starts with: tells a token apart from a password in a config
/// file or a secret scanner's view.
pub const TOKEN_PREFIX: &str = "bst_";

/// A bearer token's text. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new token from the operating system's random source.
    pub fn generate() -> Token {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
    }

    /// A token read from a file or the environment, surrounding whitespace removed.
    pub fn from_text(text: &str) -> Token {
        Token(text.trim().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        hash(&self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The SHA-256 of `token`.
pub fn hash(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// How a token is named in listings and removals: the first 8 bytes of its hash in hex. Says
/// which token without revealing it.
pub fn token_id(hash: &TokenHash) -> String {
    hex(&hash[..8])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed_with_sha256() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(TOKEN_PREFIX));
        assert_eq!(a.as_str().len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(format!("{a:?}"), "Token(..)");
        // The SHA-256 test vector of "abc".
        assert_eq!(
            hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_id(&hash("abc")), "ba7816bf8f01cfea");
        assert_eq!(Token::from_text(" x\n").as_str(), "x");
    }
}
