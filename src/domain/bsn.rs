//! The child's citizen service number (BSN), rule D9.
//!
//! A [`Bsn`] can only be built valid: 9 digits (an 8-digit input gets a leading zero),
//! passing the 11-proef, not all zeros. It never prints itself: `Debug` and `Display`
//! show a placeholder, errors never echo the input, and the only way to the digits is
//! [`Bsn::normalised_digits`], which the pseudonym module uses to derive keys.

use std::fmt;

/// A valid BSN. Holds the normalised 9 ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Bsn([u8; 9]);

/// Why a BSN was refused. Messages say what is wrong and never contain the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BsnError {
    #[error("the BSN is empty; give the child's 9-digit citizen service number")]
    Empty,
    #[error("the BSN has {0} characters; a BSN has 9 digits (8 digits get a leading zero)")]
    WrongLength(usize),
    #[error("the BSN may contain only the digits 0-9 (no spaces, dots or dashes)")]
    NotDigits,
    #[error("the BSN is all zeros, which is not a valid citizen service number")]
    AllZeros,
    #[error("the BSN fails the 11-proef check; check the number for a typing error")]
    Checksum,
}

impl Bsn {
    /// Parses and validates a BSN (rule D9).
    pub fn parse(input: &str) -> Result<Bsn, BsnError> {
        let bytes = input.as_bytes();
        if bytes.is_empty() {
            return Err(BsnError::Empty);
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(BsnError::NotDigits);
        }
        let mut digits = [b'0'; 9];
        match bytes.len() {
            9 => digits.copy_from_slice(bytes),
            8 => digits[1..].copy_from_slice(bytes),
            n => return Err(BsnError::WrongLength(n)),
        }
        if digits.iter().all(|&d| d == b'0') {
            return Err(BsnError::AllZeros);
        }
        if !eleven_test(&digits) {
            return Err(BsnError::Checksum);
        }
        Ok(Bsn(digits))
    }

    /// The normalised 9 digits. Only for deriving pseudonyms; never log or send these.
    pub fn normalised_digits(&self) -> &[u8; 9] {
        &self.0
    }
}

/// `9d1+8d2+7d3+6d4+5d5+4d6+3d7+2d8-d9 ≡ 0 (mod 11)`.
fn eleven_test(digits: &[u8; 9]) -> bool {
    let mut sum: i64 = 0;
    for (i, &d) in digits.iter().enumerate() {
        let value = i64::from(d - b'0');
        let weight = if i == 8 { -1 } else { 9 - i as i64 };
        sum += weight * value;
    }
    sum.rem_euclid(11) == 0
}

impl fmt::Debug for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bsn(<redacted>)")
    }
}

impl fmt::Display for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<bsn redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../../tests/data/bsn-vectors.txt");

    #[test]
    fn d9_bsn_vectors_from_shared_testdata() {
        let mut seen_valid = 0;
        let mut seen_invalid = 0;
        for line in VECTORS.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let mut parts = line.split_whitespace();
            let input = parts.next().unwrap();
            match parts.next().unwrap() {
                "valid" => {
                    let bsn = Bsn::parse(input).unwrap_or_else(|e| panic!("line {line}: {e}"));
                    let want = parts.next().unwrap();
                    assert_eq!(bsn.normalised_digits(), want.as_bytes(), "line {line}");
                    seen_valid += 1;
                }
                "invalid" => {
                    assert!(Bsn::parse(input).is_err(), "line {line} must be refused");
                    seen_invalid += 1;
                }
                other => panic!("unknown verdict {other}"),
            }
        }
        assert!(seen_valid >= 40 && seen_invalid >= 3, "vectors file looks truncated");
    }

    #[test]
    fn d9_eight_digits_get_a_leading_zero() {
        let bsn = Bsn::parse("42473342").unwrap();
        assert_eq!(bsn.normalised_digits(), b"042473342");
        assert_eq!(bsn, Bsn::parse("042473342").unwrap());
    }

    #[test]
    fn d9_refuses_malformed_input_with_specific_errors() {
        assert_eq!(Bsn::parse(""), Err(BsnError::Empty));
        assert_eq!(Bsn::parse("1234567"), Err(BsnError::WrongLength(7)));
        assert_eq!(Bsn::parse("1234567890"), Err(BsnError::WrongLength(10)));
        assert_eq!(Bsn::parse("12345678a"), Err(BsnError::NotDigits));
        assert_eq!(Bsn::parse(" 123456782"), Err(BsnError::NotDigits));
        assert_eq!(Bsn::parse("１２３４５６７８２"), Err(BsnError::NotDigits));
        assert_eq!(Bsn::parse("000000000"), Err(BsnError::AllZeros));
        assert_eq!(Bsn::parse("00000000"), Err(BsnError::AllZeros));
        assert_eq!(Bsn::parse("123456789"), Err(BsnError::Checksum));
    }

    #[test]
    fn d9_checksum_uses_minus_one_for_the_last_digit() {
        // 111222333: 9+8+7+12+10+8+9+6-3 = 66 = 6*11.
        assert!(Bsn::parse("111222333").is_ok());
        // Changing only the last digit by one breaks it.
        assert!(Bsn::parse("111222334").is_err());
    }

    #[test]
    fn invariant1_bsn_never_prints_itself() {
        let bsn = Bsn::parse("123456782").unwrap();
        let shown = format!("{bsn} {bsn:?} {:?}", Some(&bsn));
        assert!(!shown.contains("123456782"), "{shown}");
        for input in ["12345678a", "123456789", "1234567"] {
            let msg = Bsn::parse(input).unwrap_err().to_string();
            assert!(!msg.contains(input), "{msg}");
        }
    }
}
