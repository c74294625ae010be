//! Batched DLEQ proofs: a peer shows that every blinded answer it returns was made with
//! the key it published.
//!
//! This module owns the discrete-logarithm-equivalence proof of RFC 9497 (OPRF/VOPRF)
//! §2.2 for the ciphersuite ristretto255-SHA512 (§4.1): given a generator `A`, a public
//! key `B = k·A` and a batch of pairs `(C[i], D[i])`, the prover (who holds `k`) shows
//! `D[i] = k·C[i]` for every `i` with one constant-size proof `(c, s)`, without
//! revealing `k`. It follows the RFC exactly:
//!
//! - `GenerateProof` / `VerifyProof` (§2.2.1, §2.2.2), with `ComputeCompositesFast` on the
//!   prover side (uses `k`: `Z = k·M`) and `ComputeComposites` on the verifier side
//!   (`Z = Σ dᵢ·D[i]`);
//! - `HashToScalar` = `expand_message_xmd` with SHA-512 (RFC 9380 §5.3.1), 64 bytes read
//!   little-endian and reduced modulo the group order, DST `"HashToScalar-" ‖ context`;
//! - elements serialised as canonical 32-byte ristretto255 encodings (RFC 9496 §4.3),
//!   scalars as canonical 32-byte little-endian integers; the identity is refused
//!   wherever the RFC's `DeserializeElement` would refuse it.
//!
//! The RFC's `contextString` is the caller's `context` here. With
//! [`RFC9497_VOPRF_CONTEXT`] the proofs are byte for byte those of the RFC's VOPRF mode
//! (the tests reproduce its Appendix A.1.2 vectors). virfed itself uses
//! [`virfed_context`], which names the link (answering region, asking region) and the key
//! epoch, so a proof made for one link or epoch never verifies for another.
//!
//! Why: invariant 9 (every peer may be hostile). A peer answers each batch of blinded
//! points `Q` with `D = Q·b`; if a node applied those answers unchecked, a peer could
//! invent `D` values that match children it does not know. A node therefore applies a
//! peer's blinded answers only after [`verify_blinded`] accepts the batch against the
//! public key `Y = G·b` the peer published for that link (see DESIGN.md, "Pseudonyms").
//!
//! Nothing here panics on any input: every malformed length, encoding, scalar or batch is
//! a [`ProofError`].

use std::borrow::Cow;
use std::fmt;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};

use crate::pseudonym::{BlindKey, Blinded};

/// RFC 9497's `contextString` for VOPRF mode with ristretto255-SHA512:
/// `"OPRFV1-" ‖ I2OSP(0x01, 1) ‖ "-" ‖ "ristretto255-SHA512"`. Use it to interoperate
/// with RFC 9497 implementations; virfed's own links use [`virfed_context`].
pub const RFC9497_VOPRF_CONTEXT: &[u8] = b"OPRFV1-\x01-ristretto255-SHA512";

/// The domain string that starts every [`virfed_context`] (protocol v1).
pub const VIRFED_CONTEXT_DOMAIN: &[u8] = b"virfed/dleq/v1";

/// The longest context accepted: `"HashToScalar-" ‖ context` must fit the 255-byte DST
/// limit of RFC 9380 §5.3.1.
pub const MAX_CONTEXT_LEN: usize = 255 - HASH_TO_SCALAR_PREFIX.len();

/// The largest batch one proof may cover: RFC 9497 encodes the index `i` of each pair in
/// two bytes. Larger exchanges are split into several batches, each with its own proof.
pub const MAX_BATCH: usize = 1 << 16;

/// The longest region id [`virfed_context`] accepts (the same bound as region ids in
/// configuration and certificates).
pub const MAX_REGION_ID_LEN: usize = 63;

const HASH_TO_SCALAR_PREFIX: &[u8] = b"HashToScalar-";
const SEED_PREFIX: &[u8] = b"Seed-";
/// `Ne`: the length of a serialised ristretto255 element.
const ELEMENT_LEN: usize = 32;

/// Which element of a DLEQ statement an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The generator `A` (in virfed always the ristretto255 base point `G`).
    Generator,
    /// The prover's public key `B = k·A` (in virfed the peer's published `Y = G·b`).
    PublicKey,
    /// Input `C[i]`: a point the asking node sent for blinding.
    Input(usize),
    /// Answer `D[i]`: the prover's claimed `k·C[i]`.
    Answer(usize),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Generator => f.write_str("the generator A"),
            Part::PublicKey => f.write_str("the public key B"),
            Part::Input(i) => write!(f, "input C[{i}]"),
            Part::Answer(i) => write!(f, "answer D[{i}]"),
        }
    }
}

/// Why a proof could not be made, parsed or verified. Every variant means: do not apply
/// the answers it was meant to cover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("DLEQ batch is empty: a proof must cover at least one (input, answer) pair")]
    EmptyBatch,
    #[error("DLEQ batch has {inputs} inputs but {answers} answers: every input needs exactly one answer, in order")]
    LengthMismatch { inputs: usize, answers: usize },
    #[error("DLEQ batch of {len} pairs exceeds the limit of {max} (RFC 9497 numbers pairs in two bytes); split it into smaller batches")]
    BatchTooLarge { len: usize, max: usize },
    #[error(
        "DLEQ context is {len} bytes, over the limit of {max} (\"HashToScalar-\" ‖ context must fit a 255-byte DST)"
    )]
    ContextTooLong { len: usize, max: usize },
    #[error("region id of {len} bytes cannot name a DLEQ link: it must be 1 to {max} bytes")]
    BadRegionId { len: usize, max: usize },
    #[error("{0} is not a canonical ristretto255 encoding; refuse the message")]
    BadEncoding(Part),
    #[error("{0} is the identity element, which proves nothing; refuse the message")]
    Identity(Part),
    #[error("a DLEQ proof is 64 bytes (c ‖ s), got {len}")]
    ProofLength { len: usize },
    #[error("proof scalar {which} is not canonical (it must be below the group order); refuse the proof")]
    NonCanonicalScalar { which: &'static str },
    #[error("proof randomness r is zero, which would reveal the key; draw it with dleq::prove")]
    ZeroNonce,
    #[error("DLEQ proof does not verify: the answers were not all made with the key published for this link and epoch; do not apply them")]
    Invalid,
}

/// A batched DLEQ proof `(c, s)` (RFC 9497 §2.2), serialised as `c ‖ s`, 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    c: Scalar,
    s: Scalar,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof({})", hex::encode(self.to_bytes()))
    }
}

impl Proof {
    /// The length of a serialised proof.
    pub const LEN: usize = 64;

    /// `SerializeScalar(c) ‖ SerializeScalar(s)`.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.c.as_bytes());
        out[32..].copy_from_slice(self.s.as_bytes());
        out
    }

    /// Parses `c ‖ s`. Refuses any other length and any scalar that is not the canonical
    /// encoding (below the group order), so a proof has exactly one byte form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Proof, ProofError> {
        let bytes: &[u8; 64] = bytes.try_into().map_err(|_| ProofError::ProofLength { len: bytes.len() })?;
        let mut c = [0u8; 32];
        let mut s = [0u8; 32];
        c.copy_from_slice(&bytes[..32]);
        s.copy_from_slice(&bytes[32..]);
        Ok(Proof { c: canonical_scalar(c, "c")?, s: canonical_scalar(s, "s")? })
    }
}

fn canonical_scalar(bytes: [u8; 32], which: &'static str) -> Result<Scalar, ProofError> {
    Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes)).ok_or(ProofError::NonCanonicalScalar { which })
}

/// RFC 9497 `GenerateProof(k, A, B, C, D)` with the proof randomness `r` supplied by the
/// caller. **Only for known-answer tests**: reusing `r` for two different statements, or a
/// predictable `r`, reveals `k`. Production code calls [`prove`] or [`prove_blinded`].
///
/// The prover does not check `B = k·A` or `D[i] = k·C[i]` (that would cost one scalar
/// multiplication per pair); a proof over wrong answers simply fails to verify.
pub fn generate_proof(
    k: &Scalar,
    a: &RistrettoPoint,
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    context: &[u8],
    r: &Scalar,
) -> Result<Proof, ProofError> {
    Statement::from_points(a, b, c, d, context)?.prove(k, context, r)
}

/// RFC 9497 `GenerateProof(k, A, B, C, D)` with `r = RandomScalar()` drawn from `rng`.
pub fn prove<R: RngCore + CryptoRng>(
    k: &Scalar,
    a: &RistrettoPoint,
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    context: &[u8],
    rng: &mut R,
) -> Result<Proof, ProofError> {
    Statement::from_points(a, b, c, d, context)?.prove(k, context, &random_nonzero_scalar(rng))
}

/// RFC 9497 `VerifyProof(A, B, C, D, proof)`. `Ok(())` only when the proof shows, under
/// `context`, that one `k` gives both `B = k·A` and every `D[i] = k·C[i]`. The lists must
/// be non-empty, of equal length, and free of the identity element.
pub fn verify_proof(
    a: &RistrettoPoint,
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    proof: &Proof,
    context: &[u8],
) -> Result<(), ProofError> {
    Statement::from_points(a, b, c, d, context)?.verify(proof, context)
}

/// The context virfed proves under, for answers from `from_region` (the region that
/// blinds with its key and proves) to `to_region` (the region that asked and verifies),
/// made with the key of `epoch`:
/// `"virfed/dleq/v1" ‖ I2OSP(len(from), 2) ‖ from ‖ I2OSP(len(to), 2) ‖ to ‖ I2OSP(epoch, 8)`.
/// The length prefixes make the encoding injective, so no other link or epoch shares it.
/// Region ids must be 1 to [`MAX_REGION_ID_LEN`] bytes.
pub fn virfed_context(from_region: &str, to_region: &str, epoch: u64) -> Result<Vec<u8>, ProofError> {
    let mut out = Vec::with_capacity(VIRFED_CONTEXT_DOMAIN.len() + 4 + from_region.len() + to_region.len() + 8);
    out.extend_from_slice(VIRFED_CONTEXT_DOMAIN);
    for region in [from_region, to_region] {
        if region.is_empty() || region.len() > MAX_REGION_ID_LEN {
            return Err(ProofError::BadRegionId { len: region.len(), max: MAX_REGION_ID_LEN });
        }
        out.extend_from_slice(&i2osp2(region.len()));
        out.extend_from_slice(region.as_bytes());
    }
    out.extend_from_slice(&epoch.to_be_bytes());
    Ok(out)
}

/// The public key a node publishes for its blinding key: `Y = G·k`, compressed.
pub fn public_key(key: &BlindKey) -> Blinded {
    RistrettoPoint::mul_base(&key_scalar(key)).compress().to_bytes()
}

/// Whether `bytes` can serve as a public key: a canonical, non-identity point encoding.
pub fn is_public_key(bytes: &Blinded) -> bool {
    decode(bytes, Part::PublicKey).is_ok()
}

/// The answering side of an exchange: proves that every `answers[i]` is
/// `inputs[i]·key`, against [`public_key`]`(key)` and the generator `G`. Both lists are
/// compressed points as sent; invalid, non-canonical or identity encodings are refused.
pub fn prove_blinded<R: RngCore + CryptoRng>(
    key: &BlindKey,
    inputs: &[Blinded],
    answers: &[Blinded],
    context: &[u8],
    rng: &mut R,
) -> Result<Proof, ProofError> {
    let k = key_scalar(key);
    let b = RistrettoPoint::mul_base(&k);
    let st = Statement::from_bytes(b, b.compress().to_bytes(), inputs, answers, context)?;
    st.prove(&k, context, &random_nonzero_scalar(rng))
}

/// [`prove_blinded`] for the peer API, which has just decoded every input (validating
/// it) and blinded it: `inputs[i]` is `inputs_enc[i]` decoded, and `answers[i]` is its own
/// `inputs[i]·key`, encoded. Nothing is decoded again; the prover never needs the
/// answers as points (`ComputeCompositesFast` takes `Z = k·M`).
pub fn prove_decoded<R: RngCore + CryptoRng>(
    key: &BlindKey,
    inputs: &[RistrettoPoint],
    inputs_enc: &[Blinded],
    answers: &[Blinded],
    context: &[u8],
    rng: &mut R,
) -> Result<Proof, ProofError> {
    check_shape(context, inputs.len(), answers.len())?;
    check_shape(context, inputs_enc.len(), answers.len())?;
    let k = key_scalar(key);
    let b = RistrettoPoint::mul_base(&k);
    let st = Statement {
        a: RISTRETTO_BASEPOINT_POINT,
        b,
        b_enc: b.compress().to_bytes(),
        c: Cow::Borrowed(inputs),
        c_enc: Cow::Borrowed(inputs_enc),
        d: Cow::Borrowed(&[]),
        d_enc: Cow::Borrowed(answers),
    };
    st.prove(&k, context, &random_nonzero_scalar(rng))
}

/// [`verify_blinded`] for the asker, which computed the inputs itself: `inputs[i]` is
/// `inputs_enc[i]` decoded. Only the peer's answers (and key) are decoded, and refused
/// if invalid.
pub fn verify_decoded(
    public_key: &Blinded,
    inputs: &[RistrettoPoint],
    inputs_enc: &[Blinded],
    answers: &[Blinded],
    proof: &[u8],
    context: &[u8],
) -> Result<(), ProofError> {
    let proof = Proof::from_bytes(proof)?;
    check_shape(context, inputs.len(), answers.len())?;
    check_shape(context, inputs_enc.len(), answers.len())?;
    debug_assert!(inputs.iter().zip(inputs_enc).all(|(p, e)| p.compress().to_bytes() == *e));
    let b = decode(public_key, Part::PublicKey)?;
    let st = Statement {
        a: RISTRETTO_BASEPOINT_POINT,
        b,
        b_enc: *public_key,
        c: Cow::Borrowed(inputs),
        c_enc: Cow::Borrowed(inputs_enc),
        d: Cow::Owned(decode_all(answers, Part::Answer)?),
        d_enc: Cow::Borrowed(answers),
    };
    st.verify(&proof, context)
}

/// The asking side of an exchange: `Ok(())` only if `proof` (64 bytes as received) shows
/// that every `answers[i]` is `inputs[i]` multiplied by the key behind `public_key`
/// (the peer's published `Y = G·b`), under `context` (see [`virfed_context`]). Apply the
/// answers only then. Invalid, non-canonical or identity encodings are refused.
pub fn verify_blinded(
    public_key: &Blinded,
    inputs: &[Blinded],
    answers: &[Blinded],
    proof: &[u8],
    context: &[u8],
) -> Result<(), ProofError> {
    Proof::from_bytes(proof)?;
    check_shape(context, inputs.len(), answers.len())?;
    decode(public_key, Part::PublicKey)?;
    verify_decoded(public_key, &decode_all(inputs, Part::Input)?, inputs, answers, proof, context)
}

/// `BlindKey` keeps its scalar private; its canonical bytes give the same scalar back.
fn key_scalar(key: &BlindKey) -> Scalar {
    Scalar::from_bytes_mod_order(key.to_bytes())
}

/// `RandomScalar()`: uniform and non-zero.
fn random_nonzero_scalar<R: RngCore + CryptoRng>(rng: &mut R) -> Scalar {
    loop {
        let r = Scalar::random(rng);
        if r != Scalar::ZERO {
            return r;
        }
    }
}

/// A validated DLEQ statement: points and their canonical encodings (kept so that the
/// byte-level path hashes what it received without compressing again).
struct Statement<'s> {
    a: RistrettoPoint,
    b: RistrettoPoint,
    b_enc: [u8; 32],
    c: Cow<'s, [RistrettoPoint]>,
    c_enc: Cow<'s, [[u8; 32]]>,
    d: Cow<'s, [RistrettoPoint]>,
    d_enc: Cow<'s, [[u8; 32]]>,
}

impl<'s> Statement<'s> {
    fn from_points(
        a: &RistrettoPoint,
        b: &RistrettoPoint,
        c: &'s [RistrettoPoint],
        d: &'s [RistrettoPoint],
        context: &[u8],
    ) -> Result<Statement<'s>, ProofError> {
        check_shape(context, c.len(), d.len())?;
        let a = non_identity(*a, Part::Generator)?;
        let b = non_identity(*b, Part::PublicKey)?;
        Ok(Statement {
            a,
            b,
            b_enc: b.compress().to_bytes(),
            c_enc: Cow::Owned(encode_all(c, Part::Input)?),
            d_enc: Cow::Owned(encode_all(d, Part::Answer)?),
            c: Cow::Borrowed(c),
            d: Cow::Borrowed(d),
        })
    }

    /// The byte-level statement: generator `G`, the already decoded public key `b` with
    /// its encoding, and the received encodings of `C` and `D`.
    fn from_bytes(
        b: RistrettoPoint,
        b_enc: [u8; 32],
        c_enc: &'s [Blinded],
        d_enc: &'s [Blinded],
        context: &[u8],
    ) -> Result<Statement<'s>, ProofError> {
        check_shape(context, c_enc.len(), d_enc.len())?;
        Ok(Statement {
            a: RISTRETTO_BASEPOINT_POINT,
            b: non_identity(b, Part::PublicKey)?,
            b_enc,
            c: Cow::Owned(decode_all(c_enc, Part::Input)?),
            d: Cow::Owned(decode_all(d_enc, Part::Answer)?),
            c_enc: Cow::Borrowed(c_enc),
            d_enc: Cow::Borrowed(d_enc),
        })
    }

    /// The weights `d_i` shared by both composite functions (RFC 9497 §2.2.1):
    /// `seed = Hash(I2OSP(len(Bm), 2) ‖ Bm ‖ I2OSP(len(seedDST), 2) ‖ seedDST)` and
    /// `d_i = HashToScalar(I2OSP(len(seed), 2) ‖ seed ‖ I2OSP(i, 2) ‖ I2OSP(len(Ci), 2) ‖ Ci
    /// ‖ I2OSP(len(Di), 2) ‖ Di ‖ "Composite")`.
    fn composite_weights(&self, context: &[u8]) -> Result<Vec<Scalar>, ProofError> {
        let seed = Sha512::new()
            .chain_update(i2osp2(ELEMENT_LEN))
            .chain_update(self.b_enc)
            .chain_update(i2osp2(SEED_PREFIX.len() + context.len()))
            .chain_update(SEED_PREFIX)
            .chain_update(context)
            .finalize();
        let dst = hash_to_scalar_dst(context);
        let element_len = i2osp2(ELEMENT_LEN);
        self.c_enc
            .iter()
            .zip(self.d_enc.iter())
            .enumerate()
            .map(|(i, (ci, di))| {
                let parts: [&[u8]; 8] =
                    [&i2osp2(seed.len()), &seed, &i2osp2(i), &element_len, ci, &element_len, di, b"Composite"];
                hash_to_scalar(&parts, &dst).ok_or_else(|| context_too_long(context))
            })
            .collect()
    }

    /// RFC 9497 `ComputeCompositesFast(k, B, C, D)`: the prover's `(M, Z)` with `Z = k·M`.
    fn compute_composites_fast(
        &self,
        k: &Scalar,
        context: &[u8],
    ) -> Result<(RistrettoPoint, RistrettoPoint), ProofError> {
        let weights = self.composite_weights(context)?;
        // M depends on public values only, so variable time is fine; Z involves k.
        let m = RistrettoPoint::vartime_multiscalar_mul(&weights, self.c.iter());
        Ok((m, m * k))
    }

    /// RFC 9497 `ComputeComposites(B, C, D)`: the verifier's `(M, Z)`, both from public values.
    fn compute_composites(&self, context: &[u8]) -> Result<(RistrettoPoint, RistrettoPoint), ProofError> {
        let weights = self.composite_weights(context)?;
        let m = RistrettoPoint::vartime_multiscalar_mul(&weights, self.c.iter());
        let z = RistrettoPoint::vartime_multiscalar_mul(&weights, self.d.iter());
        Ok((m, z))
    }

    /// RFC 9497 `GenerateProof`, after `r = RandomScalar()`.
    fn prove(&self, k: &Scalar, context: &[u8], r: &Scalar) -> Result<Proof, ProofError> {
        if *r == Scalar::ZERO {
            return Err(ProofError::ZeroNonce);
        }
        let (m, z) = self.compute_composites_fast(k, context)?;
        let t2 = if self.a == RISTRETTO_BASEPOINT_POINT { RistrettoPoint::mul_base(r) } else { self.a * r };
        let t3 = m * r;
        let c = challenge(&self.b_enc, &m, &z, &t2, &t3, context)?;
        Ok(Proof { c, s: r - c * k })
    }

    /// RFC 9497 `VerifyProof`.
    fn verify(&self, proof: &Proof, context: &[u8]) -> Result<(), ProofError> {
        let (m, z) = self.compute_composites(context)?;
        let t2 = RistrettoPoint::vartime_multiscalar_mul([proof.s, proof.c], [self.a, self.b]);
        let t3 = RistrettoPoint::vartime_multiscalar_mul([proof.s, proof.c], [m, z]);
        let expected = challenge(&self.b_enc, &m, &z, &t2, &t3, context)?;
        if expected == proof.c {
            Ok(())
        } else {
            Err(ProofError::Invalid)
        }
    }
}

/// The challenge of RFC 9497 §2.2.1 / §2.2.2: `HashToScalar` over the length-prefixed
/// encodings of `B`, `M`, `Z`, `t2`, `t3` followed by `"Challenge"`.
fn challenge(
    b_enc: &[u8; 32],
    m: &RistrettoPoint,
    z: &RistrettoPoint,
    t2: &RistrettoPoint,
    t3: &RistrettoPoint,
    context: &[u8],
) -> Result<Scalar, ProofError> {
    let len = i2osp2(ELEMENT_LEN);
    let (m, z, t2, t3) =
        (m.compress().to_bytes(), z.compress().to_bytes(), t2.compress().to_bytes(), t3.compress().to_bytes());
    let parts: [&[u8]; 11] = [&len, b_enc, &len, &m, &len, &z, &len, &t2, &len, &t3, b"Challenge"];
    hash_to_scalar(&parts, &hash_to_scalar_dst(context)).ok_or_else(|| context_too_long(context))
}

/// Checks what every entry point needs before touching any point: a context that fits
/// the DST, and a non-empty batch of matching lengths that fits the two-byte index.
fn check_shape(context: &[u8], inputs: usize, answers: usize) -> Result<(), ProofError> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(context_too_long(context));
    }
    if inputs != answers {
        return Err(ProofError::LengthMismatch { inputs, answers });
    }
    if inputs == 0 {
        return Err(ProofError::EmptyBatch);
    }
    if inputs > MAX_BATCH {
        return Err(ProofError::BatchTooLarge { len: inputs, max: MAX_BATCH });
    }
    Ok(())
}

fn context_too_long(context: &[u8]) -> ProofError {
    ProofError::ContextTooLong { len: context.len(), max: MAX_CONTEXT_LEN }
}

fn non_identity(point: RistrettoPoint, part: Part) -> Result<RistrettoPoint, ProofError> {
    if point.is_identity() {
        Err(ProofError::Identity(part))
    } else {
        Ok(point)
    }
}

fn encode_all(points: &[RistrettoPoint], part: fn(usize) -> Part) -> Result<Vec<[u8; 32]>, ProofError> {
    points.iter().enumerate().map(|(i, p)| Ok(non_identity(*p, part(i))?.compress().to_bytes())).collect()
}

/// RFC 9497 `DeserializeElement`: ristretto255 `Decode` (which accepts only canonical
/// encodings), then refuse the identity.
fn decode(bytes: &[u8; 32], part: Part) -> Result<RistrettoPoint, ProofError> {
    let point = CompressedRistretto(*bytes).decompress().ok_or(ProofError::BadEncoding(part))?;
    non_identity(point, part)
}

fn decode_all(encodings: &[Blinded], part: fn(usize) -> Part) -> Result<Vec<RistrettoPoint>, ProofError> {
    encodings.iter().enumerate().map(|(i, e)| decode(e, part(i))).collect()
}

/// `I2OSP(n, 2)`. Callers stay within two bytes: element and seed lengths are constants,
/// the DST is bounded by [`MAX_CONTEXT_LEN`], indices by [`MAX_BATCH`], region ids by
/// [`MAX_REGION_ID_LEN`].
fn i2osp2(n: usize) -> [u8; 2] {
    (n as u16).to_be_bytes()
}

fn hash_to_scalar_dst(context: &[u8]) -> Vec<u8> {
    [HASH_TO_SCALAR_PREFIX, context].concat()
}

/// ristretto255-SHA512 `HashToScalar` (RFC 9497 §4.1) of the concatenation of `parts`:
/// 64 bytes of `expand_message_xmd`, read little-endian, reduced modulo the group order.
/// `None` only if `dst` is over 255 bytes.
fn hash_to_scalar(parts: &[&[u8]], dst: &[u8]) -> Option<Scalar> {
    let mut wide = [0u8; 64];
    expand_message_xmd_sha512(parts, dst, &mut wide)?;
    Some(Scalar::from_bytes_mod_order_wide(&wide))
}

/// `expand_message_xmd` (RFC 9380 §5.3.1) with SHA-512 (`b_in_bytes` = 64, `s_in_bytes` =
/// 128), filling `out` (`len_in_bytes` = `out.len()`) from the concatenation of `msg`.
/// `None` where the RFC aborts: `ell > 255`, `len_in_bytes > 65535` or `len(DST) > 255`.
fn expand_message_xmd_sha512(msg: &[&[u8]], dst: &[u8], out: &mut [u8]) -> Option<()> {
    const B_IN_BYTES: usize = 64;
    const S_IN_BYTES: usize = 128;
    let len = out.len();
    let ell = len.div_ceil(B_IN_BYTES);
    if ell > 255 || len > 0xffff || dst.len() > 255 {
        return None;
    }
    // DST_prime = DST ‖ I2OSP(len(DST), 1)
    let dst_len = [dst.len() as u8];
    // b_0 = H(Z_pad ‖ msg ‖ I2OSP(len_in_bytes, 2) ‖ I2OSP(0, 1) ‖ DST_prime)
    let mut h0 = Sha512::new().chain_update([0u8; S_IN_BYTES]);
    for part in msg {
        h0.update(part);
    }
    let b0 = h0
        .chain_update((len as u16).to_be_bytes())
        .chain_update([0u8])
        .chain_update(dst)
        .chain_update(dst_len)
        .finalize();
    // b_1 = H(b_0 ‖ I2OSP(1, 1) ‖ DST_prime); b_i = H(strxor(b_0, b_(i-1)) ‖ I2OSP(i, 1) ‖ DST_prime)
    let mut chained = [0u8; B_IN_BYTES];
    chained.copy_from_slice(&b0);
    for (i, chunk) in out.chunks_mut(B_IN_BYTES).enumerate() {
        let b_i = Sha512::new()
            .chain_update(chained)
            .chain_update([(i + 1) as u8])
            .chain_update(dst)
            .chain_update(dst_len)
            .finalize();
        chunk.copy_from_slice(&b_i[..chunk.len()]);
        for ((x, b0_byte), bi_byte) in chained.iter_mut().zip(b0.iter()).zip(b_i.iter()) {
            *x = b0_byte ^ bi_byte;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn bytes32(hex_str: &str) -> [u8; 32] {
        hex::decode(hex_str).unwrap().try_into().unwrap()
    }

    fn scalar(hex_str: &str) -> Scalar {
        Option::from(Scalar::from_canonical_bytes(bytes32(hex_str))).unwrap()
    }

    fn point(hex_str: &str) -> RistrettoPoint {
        CompressedRistretto(bytes32(hex_str)).decompress().unwrap()
    }

    fn random_points(n: usize) -> Vec<RistrettoPoint> {
        (0..n).map(|_| RistrettoPoint::random(&mut OsRng)).collect()
    }

    fn compress_all(points: &[RistrettoPoint]) -> Vec<Blinded> {
        points.iter().map(|p| p.compress().to_bytes()).collect()
    }

    // RFC 9380, Appendix K.3: expand_message_xmd(SHA-512), DST
    // "QUUX-V01-CS02-with-expander-SHA512-256", for len_in_bytes 0x20 and 0x80.
    #[test]
    fn expand_message_xmd_sha512_matches_rfc9380_appendix_k3() {
        let dst = b"QUUX-V01-CS02-with-expander-SHA512-256";
        let q128 = format!("q128_{}", "q".repeat(128));
        let a512 = format!("a512_{}", "a".repeat(512));
        let cases: [(&str, usize, &str); 10] = [
            ("", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
            ("abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
            ("abcdef0123456789", 0x20, "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58"),
            (&q128, 0x20, "7336234ee9983902440f6bc35b348352013becd88938d2afec44311caf8356b3"),
            (&a512, 0x20, "57b5f7e766d5be68a6bfe1768e3c2b7f1228b3e4b3134956dd73a59b954c66f4"),
            (
                "",
                0x80,
                "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921b052b62eaed99b46f72f2ef4cc96bfaf\
                 254ebbbec091e1a3b9e4fb5e5b619d2e0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e\
                 b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
            ),
            (
                "abc",
                0x80,
                "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11bdd7732d8b38adb4a0edc26a0cef4bb4\
                 5217135456e58fbca1703cd6032cb1347ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843\
                 1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
            ),
            (
                "abcdef0123456789",
                0x80,
                "3f721f208e6199fe903545abc26c837ce59ac6fa45733f1baaf0222f8b7acb0424814fcb5eecf6c1d38f06e9d0a6ccfb\
                 f85ae612ab8735dfdf9ce84c372a77c8f9e1c1e952c3a61b7567dd0693016af51d2745822663d0c2367e3f4f0bed827f\
                 eecc2aaf98c949b5ed0d35c3f1023d64ad1407924288d366ea159f46287e61ac",
            ),
            (
                &q128,
                0x80,
                "b799b045a58c8d2b4334cf54b78260b45eec544f9f2fb5bd12fb603eaee70db7317bf807c406e26373922b7b8920fa29\
                 142703dd52bdf280084fb7ef69da78afdf80b3586395b433dc66cde048a258e476a561e9deba7060af40adf30c64249c\
                 a7ddea79806ee5beb9a1422949471d267b21bc88e688e4014087a0b592b695ed",
            ),
            (
                &a512,
                0x80,
                "05b0bfef265dcee87654372777b7c44177e2ae4c13a27f103340d9cd11c86cb2426ffcad5bd964080c2aee97f03be1ca\
                 18e30a1f14e27bc11ebbd650f305269cc9fb1db08bf90bfc79b42a952b46daf810359e7bc36452684784a64952c343c5\
                 2e5124cd1f71d474d5197fefc571a92929c9084ffe1112cf5eea5192ebff330b",
            ),
        ];
        for (msg, len, expected) in cases {
            let mut out = vec![0u8; len];
            expand_message_xmd_sha512(&[msg.as_bytes()], dst, &mut out).unwrap();
            assert_eq!(hex::encode(&out), expected, "msg {:?}, len {len}", &msg[..msg.len().min(8)]);
            // Splitting the message into parts changes nothing.
            let (head, tail) = msg.as_bytes().split_at(msg.len() / 2);
            let mut split = vec![0u8; len];
            expand_message_xmd_sha512(&[head, tail], dst, &mut split).unwrap();
            assert_eq!(split, out);
        }
        // Where RFC 9380 aborts, so does this: DST over 255 bytes, ell over 255.
        assert!(expand_message_xmd_sha512(&[b"x"], &[b'd'; 256], &mut [0u8; 32]).is_none());
        assert!(expand_message_xmd_sha512(&[b"x"], dst, &mut vec![0u8; 255 * 64 + 1]).is_none());
    }

    // RFC 9497, Appendix A.1.2 (ristretto255-SHA512, VOPRF mode).
    const SK_SM: &str = "e6f73f344b79b379f1a0dd37e07ff62e38d9f71345ce62ae3a9bc60b04ccd909";
    const PK_SM: &str = "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e";
    const BLIND: &str = "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706";
    // Test vectors 1 and 2 (batch size 1): (Input, BlindedElement, EvaluationElement, Proof).
    const SINGLE: [(&[u8], &str, &str, &str); 2] = [
        (
            &[0x00],
            "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
            "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
            "ddef93772692e535d1a53903db24367355cc2cc78de93b3be5a8ffcc6985dd06\
             6d4346421d17bf5117a2a1ff0fcb2a759f58a539dfbe857a40bce4cf49ec600d",
        ),
        (
            &[0x5a; 17],
            "cc0b2a350101881d8a4cba4c80241d74fb7dcbfde4a61fde2f91443c2bf9ef0c",
            "60a59a57208d48aca71e9e850d22674b611f752bed48b36f7a91b372bd7ad468",
            "401a0da6264f8cf45bb2f5264bc31e109155600babb3cd4e5af7d181a2c9dc0a\
             67154fabf031fd936051dec80b0b6ae29c9503493dde7393b722eafdf5a50b02",
        ),
    ];
    const SINGLE_PROOF_RANDOM_SCALAR: &str = "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e";
    // Test vector 3 (batch size 2).
    const BATCH_BLINDED: [&str; 2] = [
        "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
        "90a0145ea9da29254c3a56be4fe185465ebb3bf2a1801f7124bbbadac751e654",
    ];
    const BATCH_EVALUATED: [&str; 2] = [
        "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
        "cc5ac221950a49ceaa73c8db41b82c20372a4c8d63e5dded2db920b7eee36a2a",
    ];
    const BATCH_PROOF: &str = "cc203910175d786927eeb44ea847328047892ddf8590e723c37205cb74600b0a\
                               5ab5337c8eb4ceae0494c2cf89529dcf94572ed267473d567aeed6ab873dee08";
    const BATCH_PROOF_RANDOM_SCALAR: &str = "419c4f4f5052c53c45f3da494d2b67b220d02118e0857cdbcf037f9ea84bbe0c";

    #[test]
    fn hash_to_scalar_reproduces_rfc9497_voprf_key_derivation() {
        // DeriveKeyPair(Seed = a3 × 32, KeyInfo = "test key"): one HashToScalar of
        // seed ‖ I2OSP(len(info), 2) ‖ info ‖ I2OSP(0, 1) under DST "DeriveKeyPair" ‖ contextString.
        let info = b"test key";
        let dst = [b"DeriveKeyPair".as_slice(), RFC9497_VOPRF_CONTEXT].concat();
        let sk = hash_to_scalar(&[&[0xa3; 32], &i2osp2(info.len()), info, &[0]], &dst).unwrap();
        assert_eq!(hex::encode(sk.as_bytes()), SK_SM);
        assert_eq!(hex::encode(RistrettoPoint::mul_base(&sk).compress().as_bytes()), PK_SM);
    }

    #[test]
    fn rfc9497_voprf_inputs_blind_and_evaluate_to_published_elements() {
        // The chain behind the proof vectors: HashToGroup (expand_message_xmd under
        // "HashToGroup-" ‖ contextString, then ristretto255's one-way map), Blind, BlindEvaluate.
        let dst = [b"HashToGroup-".as_slice(), RFC9497_VOPRF_CONTEXT].concat();
        for (input, blinded, evaluated, _) in SINGLE {
            let mut uniform = [0u8; 64];
            expand_message_xmd_sha512(&[input], &dst, &mut uniform).unwrap();
            let blinded_element = RistrettoPoint::from_uniform_bytes(&uniform) * scalar(BLIND);
            assert_eq!(hex::encode(blinded_element.compress().as_bytes()), blinded);
            assert_eq!(hex::encode((blinded_element * scalar(SK_SM)).compress().as_bytes()), evaluated);
        }
    }

    #[test]
    fn rfc9497_voprf_single_proofs_reproduce_published_bytes_and_verify() {
        let (k, g, pk) = (scalar(SK_SM), RISTRETTO_BASEPOINT_POINT, point(PK_SM));
        let r = scalar(SINGLE_PROOF_RANDOM_SCALAR);
        for (_, blinded, evaluated, expected) in SINGLE {
            let (c, d) = ([point(blinded)], [point(evaluated)]);
            let proof = generate_proof(&k, &g, &pk, &c, &d, RFC9497_VOPRF_CONTEXT, &r).unwrap();
            assert_eq!(hex::encode(proof.to_bytes()), expected);
            let parsed = Proof::from_bytes(&hex::decode(expected).unwrap()).unwrap();
            assert_eq!(verify_proof(&g, &pk, &c, &d, &parsed, RFC9497_VOPRF_CONTEXT), Ok(()));
        }
    }

    #[test]
    fn rfc9497_voprf_batch_proof_reproduces_published_bytes_and_verifies() {
        let (k, g, pk) = (scalar(SK_SM), RISTRETTO_BASEPOINT_POINT, point(PK_SM));
        let c: Vec<RistrettoPoint> = BATCH_BLINDED.iter().map(|h| point(h)).collect();
        let d: Vec<RistrettoPoint> = BATCH_EVALUATED.iter().map(|h| point(h)).collect();
        let r = scalar(BATCH_PROOF_RANDOM_SCALAR);
        let proof = generate_proof(&k, &g, &pk, &c, &d, RFC9497_VOPRF_CONTEXT, &r).unwrap();
        assert_eq!(hex::encode(proof.to_bytes()), BATCH_PROOF);
        assert_eq!(verify_proof(&g, &pk, &c, &d, &proof, RFC9497_VOPRF_CONTEXT), Ok(()));
        // The byte-level verifier accepts the published bytes as they are.
        let (c_enc, d_enc) = (BATCH_BLINDED.map(bytes32), BATCH_EVALUATED.map(bytes32));
        let proof_bytes = hex::decode(BATCH_PROOF).unwrap();
        assert_eq!(verify_blinded(&bytes32(PK_SM), &c_enc, &d_enc, &proof_bytes, RFC9497_VOPRF_CONTEXT), Ok(()));
        // Reordering the batch changes the composites: the same proof no longer verifies.
        let (c_rev, d_rev) = ([c_enc[1], c_enc[0]], [d_enc[1], d_enc[0]]);
        assert_eq!(
            verify_blinded(&bytes32(PK_SM), &c_rev, &d_rev, &proof_bytes, RFC9497_VOPRF_CONTEXT),
            Err(ProofError::Invalid)
        );
    }

    #[test]
    fn the_decoded_paths_prove_and_verify_exactly_what_the_byte_paths_do() {
        let key = BlindKey::random();
        let public = public_key(&key);
        let inputs: Vec<Blinded> = random_points(6).iter().map(|p| p.compress().to_bytes()).collect();
        let decoded = crate::pseudonym::decode_points(&inputs).unwrap();
        let answers = key.blind_decoded(&decoded);
        assert_eq!(answers, key.blind_points(&inputs).unwrap());
        let context = virfed_context("utrecht", "zwolle", 3).unwrap();
        let proof = prove_decoded(&key, &decoded, &inputs, &answers, &context, &mut OsRng).unwrap().to_bytes();
        // Either verifier accepts the fast prover's proof, and the fast verifier the byte prover's.
        assert_eq!(verify_blinded(&public, &inputs, &answers, &proof, &context), Ok(()));
        assert_eq!(verify_decoded(&public, &decoded, &inputs, &answers, &proof, &context), Ok(()));
        let slow = prove_blinded(&key, &inputs, &answers, &context, &mut OsRng).unwrap().to_bytes();
        assert_eq!(verify_decoded(&public, &decoded, &inputs, &answers, &slow, &context), Ok(()));
        // One answer not made with the key: refused by the fast verifier, as by the other.
        let mut wrong = answers.clone();
        wrong[4] = BlindKey::random().blind_points(&inputs[4..5]).unwrap()[0];
        let forged = prove_decoded(&key, &decoded, &inputs, &wrong, &context, &mut OsRng).unwrap().to_bytes();
        assert_eq!(verify_decoded(&public, &decoded, &inputs, &wrong, &forged, &context), Err(ProofError::Invalid));
        // A garbage answer encoding is refused as such; mismatched lengths before any work.
        wrong[1] = [0xff; 32];
        assert_eq!(
            verify_decoded(&public, &decoded, &inputs, &wrong, &proof, &context),
            Err(ProofError::BadEncoding(Part::Answer(1)))
        );
        assert!(matches!(
            verify_decoded(&public, &decoded[..5], &inputs, &answers, &proof, &context),
            Err(ProofError::LengthMismatch { .. })
        ));
        // The asker's published points, decoded from its own encodings by publish_points.
        let towards = key.towards("zwolle");
        let (encoded, points) = towards.publish_points(&inputs).unwrap();
        assert_eq!(points.iter().map(|p| p.compress().to_bytes()).collect::<Vec<_>>(), encoded);
    }

    #[test]
    fn composites_fast_with_key_equals_composites_from_answers() {
        let k = Scalar::random(&mut OsRng);
        let g = RISTRETTO_BASEPOINT_POINT;
        let c = random_points(5);
        let d: Vec<RistrettoPoint> = c.iter().map(|p| p * k).collect();
        let context = virfed_context("utrecht", "zwolle", 3).unwrap();
        let st = Statement::from_points(&g, &(g * k), &c, &d, &context).unwrap();
        let fast = st.compute_composites_fast(&k, &context).unwrap();
        let slow = st.compute_composites(&context).unwrap();
        assert_eq!(fast, slow);
        // With one answer not made with k, the two disagree on Z (and the proof fails).
        let mut wrong = d.clone();
        wrong[2] = c[2] * Scalar::random(&mut OsRng);
        let st = Statement::from_points(&g, &(g * k), &c, &wrong, &context).unwrap();
        let (fast_m, fast_z) = st.compute_composites_fast(&k, &context).unwrap();
        let (slow_m, slow_z) = st.compute_composites(&context).unwrap();
        assert_eq!(fast_m, slow_m);
        assert_ne!(fast_z, slow_z);
    }

    /// A valid virfed statement: key, its public key, inputs, answers, context and proof.
    struct Fixture {
        key: BlindKey,
        public: Blinded,
        inputs: Vec<Blinded>,
        answers: Vec<Blinded>,
        context: Vec<u8>,
        proof: [u8; 64],
    }

    fn fixture(n: usize) -> Fixture {
        let key = BlindKey::random();
        let inputs = compress_all(&random_points(n));
        let answers = key.blind_points(&inputs).unwrap();
        let context = virfed_context("utrecht", "zwolle", 7).unwrap();
        let proof = prove_blinded(&key, &inputs, &answers, &context, &mut OsRng).unwrap().to_bytes();
        let public = public_key(&key);
        Fixture { key, public, inputs, answers, context, proof }
    }

    impl Fixture {
        fn verify(&self) -> Result<(), ProofError> {
            verify_blinded(&self.public, &self.inputs, &self.answers, &self.proof, &self.context)
        }
    }

    #[test]
    fn blinded_answers_with_proof_verify_against_published_key() {
        let f = fixture(4);
        assert_eq!(f.verify(), Ok(()));
        // Also for a batch of one, and through the point-level API.
        let one = fixture(1);
        assert_eq!(one.verify(), Ok(()));
        let k = key_scalar(&f.key);
        let c: Vec<RistrettoPoint> = f.inputs.iter().map(|e| CompressedRistretto(*e).decompress().unwrap()).collect();
        let d: Vec<RistrettoPoint> = c.iter().map(|p| p * k).collect();
        let g = RISTRETTO_BASEPOINT_POINT;
        let proof = prove(&k, &g, &(g * k), &c, &d, &f.context, &mut OsRng).unwrap();
        assert_eq!(verify_proof(&g, &(g * k), &c, &d, &proof, &f.context), Ok(()));
        assert_eq!(compress_all(&d), f.answers, "point and byte APIs describe the same answers");
    }

    #[test]
    fn proof_fails_for_a_different_key() {
        let mut f = fixture(3);
        f.public = public_key(&BlindKey::random());
        assert_eq!(f.verify(), Err(ProofError::Invalid));
        // Answers made with another key, proven with the published one, fail too.
        let mut f = fixture(3);
        let other = BlindKey::random();
        f.answers = other.blind_points(&f.inputs).unwrap();
        f.proof = prove_blinded(&f.key, &f.inputs, &f.answers, &f.context, &mut OsRng).unwrap().to_bytes();
        assert_eq!(f.verify(), Err(ProofError::Invalid));
    }

    #[test]
    fn proof_fails_for_swapped_answers() {
        let mut f = fixture(3);
        f.answers.swap(0, 2);
        assert_eq!(f.verify(), Err(ProofError::Invalid));
        // Even when the prover proves the swapped list itself.
        f.proof = prove_blinded(&f.key, &f.inputs, &f.answers, &f.context, &mut OsRng).unwrap().to_bytes();
        assert_eq!(f.verify(), Err(ProofError::Invalid));
    }

    #[test]
    fn proof_fails_for_an_answer_not_multiplied_by_the_key() {
        let mut f = fixture(5);
        // An invented answer: a point that matches nothing the peer knows.
        f.answers[3] = RistrettoPoint::random(&mut OsRng).compress().to_bytes();
        assert_eq!(f.verify(), Err(ProofError::Invalid));
        f.proof = prove_blinded(&f.key, &f.inputs, &f.answers, &f.context, &mut OsRng).unwrap().to_bytes();
        assert_eq!(f.verify(), Err(ProofError::Invalid));
        // The input itself returned unblinded.
        let mut f = fixture(5);
        f.answers[1] = f.inputs[1];
        f.proof = prove_blinded(&f.key, &f.inputs, &f.answers, &f.context, &mut OsRng).unwrap().to_bytes();
        assert_eq!(f.verify(), Err(ProofError::Invalid));
    }

    #[test]
    fn proof_fails_under_another_link_or_epoch() {
        let f = fixture(3);
        let others = [
            virfed_context("zwolle", "utrecht", 7).unwrap(),
            virfed_context("utrecht", "twente", 7).unwrap(),
            virfed_context("amsterdam", "zwolle", 7).unwrap(),
            virfed_context("utrecht", "zwolle", 8).unwrap(),
            virfed_context("utrecht", "zwolle", 6).unwrap(),
            RFC9497_VOPRF_CONTEXT.to_vec(),
            Vec::new(),
        ];
        for context in others {
            assert_eq!(
                verify_blinded(&f.public, &f.inputs, &f.answers, &f.proof, &context),
                Err(ProofError::Invalid),
                "context {context:?}"
            );
        }
    }

    #[test]
    fn virfed_context_is_injective_and_refuses_bad_region_ids() {
        assert_ne!(virfed_context("ab", "c", 1).unwrap(), virfed_context("a", "bc", 1).unwrap());
        assert_ne!(virfed_context("a", "b", 1).unwrap(), virfed_context("b", "a", 1).unwrap());
        assert_ne!(virfed_context("a", "b", 1).unwrap(), virfed_context("a", "b", 1 << 32).unwrap());
        let ctx = virfed_context("utrecht", "zwolle", 0x0102).unwrap();
        assert!(ctx.starts_with(VIRFED_CONTEXT_DOMAIN));
        assert_eq!(
            &ctx[VIRFED_CONTEXT_DOMAIN.len()..],
            b"\x00\x07utrecht\x00\x06zwolle\x00\x00\x00\x00\x00\x00\x01\x02"
        );
        let longest = "r".repeat(MAX_REGION_ID_LEN);
        assert!(virfed_context(&longest, &longest, u64::MAX).unwrap().len() <= MAX_CONTEXT_LEN);
        let bad = ProofError::BadRegionId { len: 0, max: MAX_REGION_ID_LEN };
        assert_eq!(virfed_context("", "zwolle", 1), Err(bad.clone()));
        assert_eq!(virfed_context("utrecht", "", 1), Err(bad));
        let too_long = "r".repeat(MAX_REGION_ID_LEN + 1);
        assert_eq!(
            virfed_context(&too_long, "zwolle", 1),
            Err(ProofError::BadRegionId { len: MAX_REGION_ID_LEN + 1, max: MAX_REGION_ID_LEN })
        );
    }

    #[test]
    fn proof_fails_for_a_truncated_or_extended_batch() {
        let f = fixture(4);
        // Truncated: one pair fewer on both sides (lengths still match).
        let (inputs, answers) = (&f.inputs[..3], &f.answers[..3]);
        assert_eq!(verify_blinded(&f.public, inputs, answers, &f.proof, &f.context), Err(ProofError::Invalid));
        // Extended with a genuine extra pair the proof never covered.
        let extra = compress_all(&random_points(1));
        let mut inputs = f.inputs.clone();
        inputs.push(extra[0]);
        let mut answers = f.answers.clone();
        answers.push(f.key.blind_points(&extra).unwrap()[0]);
        assert_eq!(verify_blinded(&f.public, &inputs, &answers, &f.proof, &f.context), Err(ProofError::Invalid));
        // Lists of different lengths, or empty, are refused before any arithmetic.
        assert_eq!(
            verify_blinded(&f.public, &f.inputs, &f.answers[..3], &f.proof, &f.context),
            Err(ProofError::LengthMismatch { inputs: 4, answers: 3 })
        );
        assert_eq!(verify_blinded(&f.public, &[], &[], &f.proof, &f.context), Err(ProofError::EmptyBatch));
        assert_eq!(
            prove_blinded(&f.key, &f.inputs[..2], &f.answers, &f.context, &mut OsRng),
            Err(ProofError::LengthMismatch { inputs: 2, answers: 4 })
        );
        assert_eq!(prove_blinded(&f.key, &[], &[], &f.context, &mut OsRng), Err(ProofError::EmptyBatch));
        let too_many = vec![f.inputs[0]; MAX_BATCH + 1];
        assert_eq!(
            verify_blinded(&f.public, &too_many, &too_many, &f.proof, &f.context),
            Err(ProofError::BatchTooLarge { len: MAX_BATCH + 1, max: MAX_BATCH })
        );
    }

    /// `bytes + L` as 32 little-endian bytes: the same scalar, non-canonically encoded.
    fn add_group_order(bytes: &[u8]) -> [u8; 32] {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for ((o, x), l) in out.iter_mut().zip(bytes).zip(L) {
            let sum = u16::from(*x) + u16::from(l) + carry;
            *o = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "a canonical scalar plus L fits 32 bytes");
        out
    }

    #[test]
    fn non_canonical_or_malformed_proof_bytes_are_refused() {
        let f = fixture(2);
        let mut bad_s = f.proof;
        bad_s[32..].copy_from_slice(&add_group_order(&f.proof[32..]));
        assert_eq!(Proof::from_bytes(&bad_s), Err(ProofError::NonCanonicalScalar { which: "s" }));
        let mut bad_c = f.proof;
        bad_c[..32].copy_from_slice(&add_group_order(&f.proof[..32]));
        assert_eq!(
            verify_blinded(&f.public, &f.inputs, &f.answers, &bad_c, &f.context),
            Err(ProofError::NonCanonicalScalar { which: "c" })
        );
        let mut high_bit = f.proof;
        high_bit[63] |= 0x80;
        assert_eq!(Proof::from_bytes(&high_bit), Err(ProofError::NonCanonicalScalar { which: "s" }));
        assert_eq!(Proof::from_bytes(&f.proof[..63]), Err(ProofError::ProofLength { len: 63 }));
        assert_eq!(Proof::from_bytes(&[f.proof.as_slice(), &[0]].concat()), Err(ProofError::ProofLength { len: 65 }));
        assert_eq!(Proof::from_bytes(&f.proof).unwrap().to_bytes(), f.proof);
        // A flipped bit in a canonical proof parses but does not verify.
        let mut flipped = f.proof;
        flipped[5] ^= 0x01;
        assert_eq!(verify_blinded(&f.public, &f.inputs, &f.answers, &flipped, &f.context), Err(ProofError::Invalid));
    }

    #[test]
    fn invalid_non_canonical_and_identity_encodings_are_refused() {
        let f = fixture(3);
        let identity = [0u8; 32];
        // s = p (2^255 - 19): the identity, non-canonically encoded.
        let mut s_is_p = [0xffu8; 32];
        s_is_p[0] = 0xed;
        s_is_p[31] = 0x7f;
        // s = 1: negative field element, never a valid encoding.
        let mut negative = [0u8; 32];
        negative[0] = 1;
        for (bad, expected) in [
            (identity, ProofError::Identity(Part::Input(1))),
            (s_is_p, ProofError::BadEncoding(Part::Input(1))),
            (negative, ProofError::BadEncoding(Part::Input(1))),
            ([0xff; 32], ProofError::BadEncoding(Part::Input(1))),
        ] {
            let mut inputs = f.inputs.clone();
            inputs[1] = bad;
            assert_eq!(verify_blinded(&f.public, &inputs, &f.answers, &f.proof, &f.context), Err(expected.clone()));
            assert_eq!(prove_blinded(&f.key, &inputs, &f.answers, &f.context, &mut OsRng), Err(expected));
        }
        let mut answers = f.answers.clone();
        answers[2] = negative;
        assert_eq!(
            verify_blinded(&f.public, &f.inputs, &answers, &f.proof, &f.context),
            Err(ProofError::BadEncoding(Part::Answer(2)))
        );
        assert_eq!(
            verify_blinded(&identity, &f.inputs, &f.answers, &f.proof, &f.context),
            Err(ProofError::Identity(Part::PublicKey))
        );
        assert_eq!(
            verify_blinded(&s_is_p, &f.inputs, &f.answers, &f.proof, &f.context),
            Err(ProofError::BadEncoding(Part::PublicKey))
        );
        // The point-level API refuses the identity as well.
        let g = RISTRETTO_BASEPOINT_POINT;
        let c = random_points(2);
        let proof = Proof::from_bytes(&f.proof).unwrap();
        let zero = RistrettoPoint::default();
        assert_eq!(
            verify_proof(&g, &g, &c, &[c[0], zero], &proof, &f.context),
            Err(ProofError::Identity(Part::Answer(1)))
        );
        assert_eq!(verify_proof(&zero, &g, &c, &c, &proof, &f.context), Err(ProofError::Identity(Part::Generator)));
    }

    #[test]
    fn generate_proof_refuses_zero_nonce_and_overlong_context() {
        let (k, g) = (Scalar::random(&mut OsRng), RISTRETTO_BASEPOINT_POINT);
        let c = random_points(1);
        let d = [c[0] * k];
        assert_eq!(generate_proof(&k, &g, &(g * k), &c, &d, b"ctx", &Scalar::ZERO), Err(ProofError::ZeroNonce));
        let long = vec![b'x'; MAX_CONTEXT_LEN + 1];
        assert_eq!(
            prove(&k, &g, &(g * k), &c, &d, &long, &mut OsRng),
            Err(ProofError::ContextTooLong { len: MAX_CONTEXT_LEN + 1, max: MAX_CONTEXT_LEN })
        );
        let longest = vec![b'x'; MAX_CONTEXT_LEN];
        let proof = prove(&k, &g, &(g * k), &c, &d, &longest, &mut OsRng).unwrap();
        assert_eq!(verify_proof(&g, &(g * k), &c, &d, &proof, &longest), Ok(()));
    }
}
