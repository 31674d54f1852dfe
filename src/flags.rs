//! Small helpers for flags that several subcommands share the shape of:
//! byte counts, secrets and tokens from files (or the environment), and
//! sizes that must fit this machine. Errors name the flag.

use std::path::PathBuf;

use secrecy::SecretString;

/// Parses a byte count: digits, optionally followed by K, M, G (powers of
/// 1000) or Ki, Mi, Gi (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count such as 1048576, 64Mi or 1G"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {suffix:?} (use K, M, G, Ki, Mi or Gi)"
            ));
        }
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A secret from a file, one trailing newline dropped; errors name `flag`.
pub fn read_secret(path: &PathBuf, flag: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes =
        std::fs::read(path).map_err(|err| anyhow::anyhow!("{flag} {}: {err}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        anyhow::bail!("{flag} {}: the file is empty", path.display());
    }
    Ok(bytes)
}

/// A bearer token from a file (see [`read_secret`]); it must be UTF-8.
pub fn read_token(path: &PathBuf, flag: &str) -> anyhow::Result<SecretString> {
    let token = String::from_utf8(read_secret(path, flag)?)
        .map_err(|_| anyhow::anyhow!("{flag}: not UTF-8"))?;
    Ok(SecretString::from(token))
}

/// A secret from `file` (the flag `flag`) or else from the environment
/// variable `env`, never from a flag's value, which `ps` would show. `what`
/// names it when neither gives one.
pub fn secret_from_file_or_env(
    file: Option<&PathBuf>,
    flag: &str,
    env: &str,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    match (file, std::env::var_os(env)) {
        (Some(path), _) => read_secret(path, flag),
        (None, Some(value)) if !value.is_empty() => Ok(value.into_encoded_bytes()),
        _ => anyhow::bail!("{what} is required: {flag} or {env}"),
    }
}

/// A byte count of flag `flag` as a size in memory.
pub fn as_usize(value: u64, flag: &str) -> anyhow::Result<usize> {
    usize::try_from(value).map_err(|_| anyhow::anyhow!("{flag} is too large for this machine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1Ki"), Ok(1024));
        assert!(parse_bytes("12 apples").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("99999999999999Gi").is_err());
    }

    #[test]
    fn tokens_from_files_lose_one_newline_and_must_be_utf8() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "t0ken\r\n").expect("write");
        let token = read_token(&path, "--token-file").expect("a token");
        assert_eq!(token.expose_secret(), "t0ken");
        std::fs::write(&path, b"\xff\xfe").expect("write");
        let err = read_token(&path, "--token-file").expect_err("not UTF-8");
        assert_eq!(err.to_string(), "--token-file: not UTF-8");
        std::fs::write(&path, "\n").expect("write");
        let err = read_token(&path, "--token-file").expect_err("empty");
        assert!(err.to_string().ends_with("the file is empty"), "{err}");
    }
}
