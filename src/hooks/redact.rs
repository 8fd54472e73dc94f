//! What never reaches the store from a transcript: text inside
//! `<private>…</private>`, and strings that look like credentials.
//!
//! The patterns (each replaced by `[REDACTED:<kind>]`):
//! private key blocks (`-----BEGIN … PRIVATE KEY-----` to the matching END),
//! AWS access key ids (`AKIA…`/`ASIA…`) and `aws_secret_access_key = …`,
//! GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`),
//! Anthropic (`sk-ant-…`) and OpenAI (`sk-…`, `sk-proj-…`) keys, Stripe keys
//! (`sk_live_`, `rk_test_`, …), Slack tokens (`xox[abposr]-…`), Google API keys
//! (`AIza…`), JSON Web Tokens (`eyJ….eyJ….…`), and the value in
//! `password|passwd|secret|api_key|token = value` / `: value` (8+ characters).
//! Set `IAI_MCP_REDACT=off` to capture such strings unchanged.

use std::sync::OnceLock;

use regex::Regex;

pub const REDACT_ENV: &str = "IAI_MCP_REDACT";

struct Rule {
    kind: &'static str,
    re: Regex,
    /// Keep capture group 1 (a field name) and redact the rest.
    keep_name: bool,
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let r = |kind, pat: &str, keep_name| Rule { kind, re: Regex::new(pat).expect("valid pattern"), keep_name };
        vec![
            r("private-key", r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", false),
            r("aws-key-id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", false),
            r("aws-secret", r"(?i)(aws_secret_access_key\s*[=:]\s*)[A-Za-z0-9/+=]{40}", true),
            r("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})", false),
            r("anthropic-key", r"\bsk-ant-[A-Za-z0-9_-]{20,}", false),
            r("openai-key", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}", false),
            r("stripe-key", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}", false),
            r("slack-token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", false),
            r("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}", false),
            r("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", false),
            r(
                "credential",
                r#"(?i)(\b(?:password|passwd|secret|api[_-]?key|access[_-]?token|token)\s*[=:]\s*["']?)[^\s"']{8,}"#,
                true,
            ),
        ]
    })
}

/// Removes `<private>…</private>` spans (case-insensitive, across lines). An
/// unclosed `<private>` hides everything after it.
pub fn strip_private(text: &str) -> String {
    static OPEN: OnceLock<Regex> = OnceLock::new();
    static CLOSE: OnceLock<Regex> = OnceLock::new();
    let open = OPEN.get_or_init(|| Regex::new(r"(?i)<private>").expect("valid"));
    let close = CLOSE.get_or_init(|| Regex::new(r"(?i)</private>").expect("valid"));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(m) = open.find(rest) {
        out.push_str(&rest[..m.start()]);
        match close.find(&rest[m.end()..]) {
            Some(c) => rest = &rest[m.end() + c.end()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Replaces credential-like strings with a marker; returns the text and how
/// many were replaced.
pub fn redact_secrets(text: &str) -> (String, usize) {
    let mut out = text.to_string();
    let mut n = 0;
    for rule in rules() {
        let count = rule.re.find_iter(&out).count();
        if count == 0 {
            continue;
        }
        n += count;
        let marker = format!("[REDACTED:{}]", rule.kind);
        out = if rule.keep_name {
            rule.re.replace_all(&out, format!("${{1}}{marker}").as_str()).into_owned()
        } else {
            rule.re.replace_all(&out, marker.as_str()).into_owned()
        };
    }
    (out, n)
}

/// Whether redaction is on (it is unless `IAI_MCP_REDACT=off`).
pub fn enabled() -> bool {
    !matches!(std::env::var(REDACT_ENV).as_deref(), Ok("off" | "0" | "false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_spans_are_removed_even_unclosed() {
        assert_eq!(strip_private("a <private>secret\nstuff</private> b"), "a  b");
        assert_eq!(strip_private("a <PRIVATE>x</Private> b <private>y</private>"), "a  b ");
        assert_eq!(strip_private("keep <private>all of this is hidden"), "keep ");
        assert_eq!(strip_private("nothing private"), "nothing private");
    }

    #[test]
    fn each_secret_shape_is_redacted() {
        let samples = [
            ("key AKIAIOSFODNN7EXAMPLE here", "aws-key-id"),
            ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret"),
            ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github-token"),
            ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "anthropic-key"),
            ("OPENAI sk-proj-abcdefghijklmnopqrstuvwx", "openai-key"),
            ("stripe sk_live_0123456789abcdefABCD", "stripe-key"),
            ("slack xoxb-1234567890-abcdefghij", "slack-token"),
            ("google AIzaSyA-abcdefghijklmnopqrstuvwxyz012345", "google-api-key"),
            ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----", "private-key"),
            ("db password: hunter2hunter2", "credential"),
        ];
        for (text, kind) in samples {
            let (out, n) = redact_secrets(text);
            assert!(n >= 1, "{kind} not found in {text:?}");
            assert!(out.contains(&format!("[REDACTED:{kind}]")), "{kind}: {out}");
        }
        let (out, _) = redact_secrets("db password: hunter2hunter2");
        assert_eq!(out, "db password: [REDACTED:credential]");
        let plain = "the deploy runs on Thursday; the token bucket holds 10 requests";
        assert_eq!(redact_secrets(plain), (plain.to_string(), 0));
    }
}
