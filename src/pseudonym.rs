//! Pseudonyms of a child's BSN.
//!
//! Locally the node keys everything about a child by a [`ChildKey`]:
//! `HMAC-SHA256(local_key, "virfed/local-child/v1" ‖ 9 normalised digits)`. The local key
//! lives in its own file (32 random bytes, hex, mode 0600), never in the store, so the sled
//! files alone reveal nothing: without the key a guessed BSN cannot be tested against them.
//!
//! Across regions the node uses commutative blinding on ristretto255 (see
//! `docs/protocol.md`): `P = hash_to_ristretto("virfed/bsn/v1" ‖ digits)`, published to a
//! peer as `P·a` under the node's secret scalar `a` ([`BlindKey`], its own key file), which
//! the peer turns into `D = P·a·b`. `D` needs both secrets, so no single node can test a
//! guessed BSN offline. Per-peer handles ([`LocalKey::handle`]) name a child towards one
//! peer without letting peers link the child across regions.

use std::path::Path;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Sha256, Sha512};

use crate::domain::{Bsn, ChildKey, ParentKey};

/// Domain separation for hashing a BSN to the group (protocol v1).
pub const BSN_POINT_DOMAIN: &[u8] = b"virfed/bsn/v1";
/// Domain separation for hashing a parent's BSN to the group (family matches): a parent's
/// point never equals a child's point for the same BSN, so a parent entry can never pair
/// with a child entry.
pub const PARENT_POINT_DOMAIN: &[u8] = b"virfed/parent-bsn/v1";
/// Domain separation for per-peer handles.
pub const HANDLE_DOMAIN: &[u8] = b"virfed/handle/v1";

/// A child's handle towards one peer: 16 opaque bytes.
pub type Handle = [u8; 16];

/// A compressed ristretto255 point, as sent and stored.
pub type Blinded = [u8; 32];

/// `hash_to_ristretto("virfed/bsn/v1" ‖ 9 digits)`: ristretto255's hash-from-bytes with
/// SHA-512 (64 uniform bytes mapped by the Elligator-based one-way map).
pub fn bsn_point(bsn: &Bsn) -> RistrettoPoint {
    let mut input = Vec::with_capacity(BSN_POINT_DOMAIN.len() + 9);
    input.extend_from_slice(BSN_POINT_DOMAIN);
    input.extend_from_slice(bsn.normalised_digits());
    RistrettoPoint::hash_from_bytes::<Sha512>(&input)
}

/// `hash_to_ristretto("virfed/parent-bsn/v1" ‖ 9 digits)`: a parent's point (family matches).
pub fn parent_point(bsn: &Bsn) -> RistrettoPoint {
    let mut input = Vec::with_capacity(PARENT_POINT_DOMAIN.len() + 9);
    input.extend_from_slice(PARENT_POINT_DOMAIN);
    input.extend_from_slice(bsn.normalised_digits());
    RistrettoPoint::hash_from_bytes::<Sha512>(&input)
}

/// A point received from a peer was not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid ristretto255 point encoding")]
pub struct BadPoint;

/// The node's blinding secret `k` (a non-zero scalar).
#[derive(Clone)]
pub struct BlindKey(Scalar);

impl std::fmt::Debug for BlindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindKey(..)")
    }
}

/// The scalar is wiped from memory when the key is dropped.
impl Drop for BlindKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl BlindKey {
    /// A fresh random key.
    pub fn random() -> BlindKey {
        let mut wide = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut wide);
        BlindKey(Scalar::from_bytes_mod_order_wide(&wide))
    }

    /// A key from canonical scalar bytes (tests, key files). Zero is refused.
    pub fn from_bytes(bytes: [u8; 32]) -> Option<BlindKey> {
        let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes))?;
        (scalar != Scalar::ZERO).then_some(BlindKey(scalar))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// A public fingerprint of the key: `SHA-256(compressed(G·k))`. Lets the store check
    /// that it is opened with the key it was written with, without holding the key.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let public = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT * self.0;
        Sha256::digest(public.compress().to_bytes()).into()
    }

    /// Loads the key file (hex scalar), creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<BlindKey, KeyError> {
        let bytes = load_or_create_secret(path, || BlindKey::random().to_bytes())?;
        BlindKey::from_bytes(bytes).ok_or(KeyError::Malformed { path: path.display().to_string() })
    }

    /// `P·k` for a BSN: what this node publishes to a peer.
    pub fn blind_bsn(&self, bsn: &Bsn) -> Blinded {
        (bsn_point(bsn) * self.0).compress().to_bytes()
    }

    /// `P'·k` for a parent's BSN ([`parent_point`]): what this node publishes for a parent.
    pub fn blind_parent(&self, bsn: &Bsn) -> Blinded {
        (parent_point(bsn) * self.0).compress().to_bytes()
    }

    /// `Q·k` for a point received from a peer. Refuses invalid encodings and the identity
    /// (which would blind every child to the same value).
    pub fn blind_point(&self, point: &[u8]) -> Result<Blinded, BadPoint> {
        let bytes: [u8; 32] = point.try_into().map_err(|_| BadPoint)?;
        let q = CompressedRistretto(bytes).decompress().ok_or(BadPoint)?;
        if q == RistrettoPoint::default() {
            return Err(BadPoint);
        }
        Ok((q * self.0).compress().to_bytes())
    }

    /// `Q·k` for a batch of received points, as a peer does for one exchange. Same results
    /// as [`BlindKey::blind_point`] on each, but the encodings share one field inversion:
    /// each point is multiplied by `k/2` and the batch is doubled and compressed together.
    pub fn blind_points(&self, points: &[Blinded]) -> Result<Vec<Blinded>, BadPoint> {
        Ok(self.blind_decoded(&decode_points(points)?))
    }

    /// [`BlindKey::blind_points`] for points already decoded by [`decode_points`] (the
    /// peer API decodes each received point once: to validate it, blind it and prove it).
    pub fn blind_decoded(&self, points: &[RistrettoPoint]) -> Vec<Blinded> {
        let half = self.0 * Scalar::from(2u8).invert();
        let products: Vec<RistrettoPoint> = points.iter().map(|q| q * half).collect();
        RistrettoPoint::double_and_compress_batch(&products).into_iter().map(|c| c.to_bytes()).collect()
    }

    /// Re-keying: turns `P·self` into `P·new` without knowing `P`.
    pub fn rekey_point(&self, new: &BlindKey, point: &[u8]) -> Result<Blinded, BadPoint> {
        let factor = self.0.invert() * new.0;
        let bytes: [u8; 32] = point.try_into().map_err(|_| BadPoint)?;
        let q = CompressedRistretto(bytes).decompress().ok_or(BadPoint)?;
        Ok((q * factor).compress().to_bytes())
    }
}

/// Decodes received points, refusing invalid encodings and the identity (which would
/// blind every child to the same value).
pub fn decode_points(points: &[Blinded]) -> Result<Vec<RistrettoPoint>, BadPoint> {
    points
        .iter()
        .map(|p| CompressedRistretto(*p).decompress().filter(|q| *q != RistrettoPoint::default()).ok_or(BadPoint))
        .collect()
}

/// Domain separation for deriving a per-peer blinding key from the node's one secret.
pub const PEER_KEY_DOMAIN: &[u8] = b"virfed/peer-blind/v1";

/// This node's blinding towards one peer: the key `k_B = k·t_B`, with the tweak
/// `t_B = HMAC-SHA512(k, "virfed/peer-blind/v1" ‖ peer)` reduced to a scalar. The tweak
/// depends on the secret, so two colluding peers cannot relate `P·k_B` and `P·k_C` (the
/// same child, published to each) without breaking DDH; the store keeps one base point
/// `P·k` per child and turns it into `P·k_B` with [`PeerBlind::publish`].
#[derive(Clone)]
pub struct PeerBlind {
    key: BlindKey,
    tweak: Scalar,
}

impl std::fmt::Debug for PeerBlind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerBlind(..)")
    }
}

/// The tweak is wiped from memory when dropped (the key wipes itself).
impl Drop for PeerBlind {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.tweak);
    }
}

impl BlindKey {
    /// The key this node uses towards `peer` (see [`PeerBlind`]).
    pub fn towards(&self, peer: &str) -> PeerBlind {
        let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(&self.0.to_bytes()).expect("HMAC takes any key length");
        mac.update(PEER_KEY_DOMAIN);
        mac.update(peer.as_bytes());
        let mut wide: [u8; 64] = mac.finalize().into_bytes().into();
        let mut tweak = Scalar::from_bytes_mod_order_wide(&wide);
        zeroize::Zeroize::zeroize(&mut wide);
        if tweak == Scalar::ZERO {
            // Probability 2^-252; the identity tweak keeps the key non-zero.
            tweak = Scalar::ONE;
        }
        PeerBlind { key: BlindKey(self.0 * tweak), tweak }
    }
}

impl PeerBlind {
    /// `k_B`: answers to this peer's publishes and the proofs over them.
    pub fn key(&self) -> &BlindKey {
        &self.key
    }

    /// `P·k → P·k_B` for base points as the store keeps them, in one batch (what is
    /// published to this peer).
    pub fn publish(&self, base: &[Blinded]) -> Result<Vec<Blinded>, BadPoint> {
        Ok(self.publish_points(base)?.0)
    }

    /// [`PeerBlind::publish`], with the published points themselves: the asker checks the
    /// peer's proof over them without decoding its own encodings again.
    pub fn publish_points(&self, base: &[Blinded]) -> Result<(Vec<Blinded>, Vec<RistrettoPoint>), BadPoint> {
        let half = self.tweak * Scalar::from(2u8).invert();
        let mut products = Vec::with_capacity(base.len());
        for point in base {
            let q = CompressedRistretto(*point).decompress().ok_or(BadPoint)?;
            products.push(q * half);
        }
        let encoded = RistrettoPoint::double_and_compress_batch(&products).into_iter().map(|c| c.to_bytes()).collect();
        Ok((encoded, products.iter().map(|p| p + p).collect()))
    }

    /// [`PeerBlind::publish`] for one point.
    pub fn publish_one(&self, base: &Blinded) -> Result<Blinded, BadPoint> {
        Ok(self.publish(std::slice::from_ref(base))?[0])
    }

    /// `SHA-256(G·k_B)`: what this peer pins and shows for this node.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.key.fingerprint()
    }
}

/// Domain separation for the local child pseudonym; bump the version to re-key the format.
pub const LOCAL_CHILD_DOMAIN: &[u8] = b"virfed/local-child/v1";
/// Domain separation for the local parent pseudonym (family matches): a parent's key never
/// equals a child's key for the same BSN.
pub const LOCAL_PARENT_DOMAIN: &[u8] = b"virfed/local-parent/v1";

/// Errors loading or creating a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot create key file {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    #[error("key file {path} does not hold 64 hex digits; restore it from backup (a new key would orphan every stored pseudonym)")]
    Malformed { path: String },
}

/// The node's secret for local pseudonyms.
#[derive(Clone)]
pub struct LocalKey([u8; 32]);

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKey(..)")
    }
}

/// The key bytes are wiped from memory when the key is dropped.
impl Drop for LocalKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl LocalKey {
    pub fn from_bytes(bytes: [u8; 32]) -> LocalKey {
        LocalKey(bytes)
    }

    /// Loads the key file, creating it (mode 0600) on first start. Refuses a key file that
    /// group or others can read.
    pub fn load_or_create(path: &Path) -> Result<LocalKey, KeyError> {
        let bytes = load_or_create_secret(path, || {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            key
        })?;
        Ok(LocalKey(bytes))
    }

    /// A public fingerprint of the key, `SHA-256("virfed/local-key-fingerprint/v1" ‖ key)`:
    /// lets the store check that it is opened with the key its child keys were made with.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(b"virfed/local-key-fingerprint/v1");
        h.update(self.0);
        h.finalize().into()
    }

    /// The child's handle towards `peer`: `HMAC(local key, "virfed/handle/v1" ‖ peer ‖ 0 ‖
    /// child key)`, first 16 bytes. Stable (so re-sends are idempotent) and unlinkable
    /// across peers without the local key.
    pub fn handle(&self, peer: &str, child: &ChildKey) -> Handle {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(HANDLE_DOMAIN);
        mac.update(peer.as_bytes());
        mac.update(&[0]);
        mac.update(&child.0);
        let full = mac.finalize().into_bytes();
        let mut handle = [0u8; 16];
        handle.copy_from_slice(&full[..16]);
        handle
    }

    /// The child's local pseudonym.
    pub fn child_key(&self, bsn: &Bsn) -> ChildKey {
        ChildKey(self.keyed(LOCAL_CHILD_DOMAIN, bsn))
    }

    /// A parent's local pseudonym (its own domain string).
    pub fn parent_key(&self, bsn: &Bsn) -> ParentKey {
        ParentKey(self.keyed(LOCAL_PARENT_DOMAIN, bsn))
    }

    /// Seals a child's BSN for the durable BRP lookup queue: ChaCha20-Poly1305 under
    /// `HMAC(local key, "virfed/brp-queue/v1")` with a random nonce, bound to the child's
    /// pseudonym as associated data. Returns nonce ‖ ciphertext ‖ tag. Without the local key
    /// (which lives in `keys_dir`, never in a backup) the queue is unreadable.
    pub fn seal_bsn(&self, bsn: &Bsn, child: &ChildKey) -> Vec<u8> {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
        let key =
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, self.queue_key().as_slice()).expect("32-byte key"));
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut data = zeroize::Zeroizing::new(bsn.normalised_digits().to_vec());
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(child.0), &mut data)
            .expect("ChaCha20-Poly1305 seals 9 bytes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens what [`LocalKey::seal_bsn`] sealed for `child`; `None` when it was not sealed
    /// under this key for this child.
    pub fn open_bsn(&self, sealed: &[u8], child: &ChildKey) -> Option<Bsn> {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, self.queue_key().as_slice()).ok()?);
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = zeroize::Zeroizing::new(body.to_vec());
        let plain = key.open_in_place(nonce, Aad::from(child.0), &mut data).ok()?;
        Bsn::parse(std::str::from_utf8(plain).ok()?).ok()
    }

    fn queue_key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"virfed/brp-queue/v1");
        zeroize::Zeroizing::new(mac.finalize().into_bytes().into())
    }

    fn keyed(&self, domain: &[u8], bsn: &Bsn) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(domain);
        mac.update(bsn.normalised_digits());
        mac.finalize().into_bytes().into()
    }
}

/// Reads a 32-byte secret kept as hex in its own file, or creates the file (mode 0600)
/// with `fresh()` when it does not exist yet. A file that group or others can read, or
/// that does not hold 64 hex digits, is refused and left as it is.
fn load_or_create_secret(path: &Path, fresh: impl FnOnce() -> [u8; 32]) -> Result<[u8; 32], KeyError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(meta) => {
            check_mode(path, &meta)?;
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?,
            );
            let bytes = zeroize::Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| KeyError::Malformed { path: shown.clone() })?,
            );
            bytes.as_slice().try_into().map_err(|_| KeyError::Malformed { path: shown })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = fresh();
            write_new_secret(path, format!("{}\n", hex::encode(key)).as_bytes())
                .map_err(|source| KeyError::Create { path: shown, source })?;
            Ok(key)
        }
        Err(source) => Err(KeyError::Read { path: shown, source }),
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: path.display().to_string(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: &std::fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

/// Creates a new file readable only by its owner, writes `bytes` and syncs it.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_child_key_known_answer() {
        // HMAC-SHA256(key = 32 x 0x07, "virfed/local-child/v1" || "123456782").
        let key = LocalKey::from_bytes([7u8; 32]);
        let got = key.child_key(&Bsn::parse("123456782").unwrap());
        assert_eq!(hex::encode(got.0), KNOWN_ANSWER);
        // Eight digits normalise first, so both spellings share one pseudonym.
        assert_eq!(key.child_key(&Bsn::parse("42473342").unwrap()), key.child_key(&Bsn::parse("042473342").unwrap()));
        // A different key gives an unrelated pseudonym.
        assert_ne!(LocalKey::from_bytes([8u8; 32]).child_key(&Bsn::parse("123456782").unwrap()), got);
    }

    const KNOWN_ANSWER: &str = "dd2a9312faf5a0d34358215d9331a5da8f9f477e1f8330eba8da35342e1e942b";

    #[test]
    fn blinding_known_answers() {
        let bsn = Bsn::parse("123456782").unwrap();
        // Expected values computed independently with libsodium
        // (crypto_core_ristretto255_from_hash of SHA-512, crypto_scalarmult_ristretto255).
        assert_eq!(hex::encode(bsn_point(&bsn).compress().to_bytes()), KAT_POINT);
        let a = BlindKey::from_bytes(scalar_bytes(3)).unwrap();
        let b = BlindKey::from_bytes(scalar_bytes(5)).unwrap();
        let pa = a.blind_bsn(&bsn);
        assert_eq!(hex::encode(pa), KAT_PA);
        let pab = b.blind_point(&pa).unwrap();
        assert_eq!(hex::encode(pab), KAT_PAB);
        // The handle towards a peer is stable and peer-specific.
        let key = LocalKey::from_bytes([7u8; 32]);
        let child = key.child_key(&bsn);
        assert_eq!(hex::encode(key.handle("utrecht", &child)), KAT_HANDLE);
        assert_ne!(key.handle("utrecht", &child), key.handle("zwolle", &child));
    }

    fn scalar_bytes(n: u8) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = n;
        b
    }

    const KAT_POINT: &str = "dcb08fff0ca50272b3f994485b11320c1145b7a28d3030aceb5d57292ac4f53f";
    const KAT_PA: &str = "687055ed06e2f59f71f76c4809107d95fcd14cfdfc03ad07158a16dc0e363465";
    const KAT_PAB: &str = "6445650fb481cdb11d4b810734130df490a79cb431d32613f33485c7ece71532";
    const KAT_HANDLE: &str = "937dc2c9975755be3f6fb57fb044b094";

    #[test]
    fn blinding_commutes_and_distinct_bsns_do_not_collide() {
        let a = BlindKey::random();
        let b = BlindKey::random();
        let bsns = crate::kit::fixture::valid_bsns(100_000_000, 100_000);
        let mut seen = std::collections::HashSet::with_capacity(bsns.len());
        for (i, raw) in bsns.iter().enumerate() {
            let bsn = Bsn::parse(raw).unwrap();
            let pab = b.blind_point(&a.blind_bsn(&bsn)).unwrap();
            if i % 1000 == 0 {
                // (P·a)·b == (P·b)·a
                assert_eq!(pab, a.blind_point(&b.blind_bsn(&bsn)).unwrap());
            }
            assert!(seen.insert(pab), "two BSNs blinded to the same value");
        }
        assert_eq!(seen.len(), 100_000);
    }

    #[test]
    fn batch_blinding_equals_one_by_one_and_refuses_bad_points() {
        let k = BlindKey::random();
        let points: Vec<Blinded> = crate::kit::fixture::valid_bsns(100_000_000, 50)
            .iter()
            .map(|b| BlindKey::random().blind_bsn(&Bsn::parse(b).unwrap()))
            .collect();
        let batch = k.blind_points(&points).unwrap();
        let single: Vec<Blinded> = points.iter().map(|p| k.blind_point(p).unwrap()).collect();
        assert_eq!(batch, single);
        let mut bad = points.clone();
        bad[7] = [0u8; 32];
        assert_eq!(k.blind_points(&bad), Err(BadPoint));
    }

    #[test]
    fn per_peer_keys_differ_commute_and_match_the_base_point() {
        let a = BlindKey::random();
        let (to_b, to_c) = (a.towards("utrecht"), a.towards("zwolle"));
        assert_eq!(a.towards("utrecht").fingerprint(), to_b.fingerprint(), "derivation is stable");
        assert_ne!(to_b.fingerprint(), to_c.fingerprint(), "each peer gets its own key");
        assert_ne!(to_b.fingerprint(), a.fingerprint());
        let bsn = Bsn::parse("111222333").unwrap();
        let base = a.blind_bsn(&bsn);
        // What a peer receives is P·k_B, the same as blinding P directly with k_B.
        let published = to_b.publish_one(&base).unwrap();
        assert_eq!(published, to_b.key().blind_bsn(&bsn));
        assert_ne!(published, to_c.publish_one(&base).unwrap(), "peers cannot link by value");
        // Pair detection still commutes: P·k_B·m == P·m·k_B.
        let m = BlindKey::random();
        assert_eq!(m.blind_point(&published).unwrap(), to_b.key().blind_point(&m.blind_bsn(&bsn)).unwrap());
        // A different secret gives unrelated per-peer keys.
        assert_ne!(BlindKey::random().towards("utrecht").fingerprint(), to_b.fingerprint());
        assert!(to_b.publish(&[[0xff; 32]]).is_err());
    }

    #[test]
    fn rekey_maps_old_blinding_to_new() {
        let bsn = Bsn::parse("111222333").unwrap();
        let (old, new) = (BlindKey::random(), BlindKey::random());
        assert_eq!(old.rekey_point(&new, &old.blind_bsn(&bsn)).unwrap(), new.blind_bsn(&bsn));
    }

    #[test]
    fn invalid_and_identity_points_are_refused() {
        let k = BlindKey::random();
        assert_eq!(k.blind_point(&[0u8; 31]), Err(BadPoint));
        assert_eq!(k.blind_point(&[0xffu8; 32]), Err(BadPoint));
        assert_eq!(k.blind_point(&[0u8; 32]), Err(BadPoint), "identity must be refused");
        assert!(BlindKey::from_bytes([0u8; 32]).is_none());
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.key");
        let a = LocalKey::load_or_create(&path).unwrap();
        let b = LocalKey::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.key");
        LocalKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.key");
        write_new_secret(&path, b"short").unwrap();
        assert!(matches!(LocalKey::load_or_create(&path), Err(KeyError::Malformed { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }
}
