//! Ethereum accounts in Web3 Secret Storage (keystore) files, as go-livepeer and geth keep
//! them: `--eth-keystore-path` names a file, or a directory holding exactly one.

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context as _};

/// The password from `--eth-password`: the contents of the file it names (trailing newline
/// removed), or the value itself when no such file exists.
pub fn read_password(arg: &str) -> anyhow::Result<String> {
    let path = Path::new(arg);
    if path.is_file() {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading the password file {}", path.display()))?;
        return Ok(s.trim_end_matches(['\r', '\n']).to_string());
    }
    Ok(arg.to_string())
}

/// The single keystore file at or under `path`.
pub fn keystore_file(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        bail!("no keystore at {}", path.display());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => bail!("the keystore directory {} holds no key", path.display()),
        n => bail!(
            "the keystore directory {} holds {n} files: name one with --eth-keystore-path",
            path.display()
        ),
    }
}

/// Decrypts the account at `path` with `password`.
pub fn load(path: &Path, password: &str) -> anyhow::Result<PrivateKeySigner> {
    let file = keystore_file(path)?;
    PrivateKeySigner::decrypt_keystore(&file, password).with_context(|| {
        format!(
            "decrypting the keystore {} (wrong password, or not a keystore file)",
            file.display()
        )
    })
}

/// Writes a keystore for `key` (a new random key when `None`) into `dir`; returns the
/// account and the file written.
pub fn create(
    dir: &Path,
    password: &str,
    key: Option<&PrivateKeySigner>,
) -> anyhow::Result<(PrivateKeySigner, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let signer = key.cloned().unwrap_or_else(PrivateKeySigner::random);
    let name = format!("{:x}.json", signer.address());
    let mut rng = rand::thread_rng();
    PrivateKeySigner::encrypt_keystore(dir, &mut rng, signer.to_bytes(), password, Some(&name))
        .with_context(|| format!("writing a keystore in {}", dir.display()))?;
    Ok((signer, dir.join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_keystore_loads_with_its_password_only() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, file) = create(dir.path(), "pw", None).unwrap();
        assert_eq!(load(&file, "pw").unwrap().address(), signer.address());
        assert_eq!(load(dir.path(), "pw").unwrap().address(), signer.address());
        assert!(load(&file, "nope").is_err());
        create(dir.path(), "pw", None).unwrap();
        let e = load(dir.path(), "pw").unwrap_err().to_string();
        assert!(e.contains("holds 2 files"), "{e}");
        let pw = dir.path().join("password");
        std::fs::write(&pw, "secret\n").unwrap();
        assert_eq!(read_password(pw.to_str().unwrap()).unwrap(), "secret");
        assert_eq!(read_password("literal").unwrap(), "literal");
    }
}
