//! Identity from a client or peer certificate (DER from the TLS handshake): any bytes give
//! an identity or an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|der: &[u8]| {
    let cert = rustls_pki_types::CertificateDer::from(der.to_vec());
    let _ = virfed::pki::identity_from_cert(&cert);
});
