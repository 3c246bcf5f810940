//! `modelgate keygen --alg ed25519|p256|p384 --out KEY`: a new signing key pair. The private key
//! goes to KEY (PKCS#8 PEM, mode 0600), the public key to KEY.pub (SubjectPublicKeyInfo
//! PEM). Only the paths and the key id are printed, never key material.

use std::path::PathBuf;

use crate::sign::{keygen, KeyAlgorithm};

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Signature algorithm: ed25519, or p256/p384 for bundles the PyPI `model-signing` tool verifies
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::Ed25519)]
    alg: KeyAlgorithm,
    /// Where to write the private key; the public key goes to the same path plus `.pub`
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
    /// Replace existing key files
    #[arg(long)]
    force: bool,
    /// Print JSON (paths, algorithm, key id)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let files = keygen(args.alg, &args.out, args.force).map_err(super::sign_error)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&files)?);
    } else {
        println!(
            "private key  {} (mode 0600, keep it secret)",
            files.private.display()
        );
        println!("public key   {}", files.public.display());
        println!("algorithm    {}", files.algorithm);
        println!("key id       {}", files.key_id);
    }
    Ok(Outcome::Pass)
}
