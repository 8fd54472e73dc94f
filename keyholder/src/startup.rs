//! The one-line report the daemon pair sends back to `iai-mcp unlock` on the
//! pipe that is its stdout: `READY <storer pid>` or `ERR <stage> <message>`.

/// What `unlock` learns from the daemon pair.
#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ready { storer_pid: u32 },
    Failed { stage: String, message: String },
}

pub fn ready_line(storer_pid: u32) -> String {
    format!("READY {storer_pid}\n")
}

/// `stage` is one word: `key`, `passphrase`, `sandbox`, `storer`, `busy`.
pub fn error_line(stage: &str, message: &str) -> String {
    let one_line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("ERR {stage} {one_line}\n")
}

pub fn parse(line: &str) -> Option<Startup> {
    let line = line.trim_end_matches('\n');
    if let Some(pid) = line.strip_prefix("READY ") {
        return pid.parse().ok().map(|storer_pid| Startup::Ready { storer_pid });
    }
    let rest = line.strip_prefix("ERR ")?;
    let (stage, message) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Startup::Failed { stage: stage.to_string(), message: message.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        assert_eq!(parse(&ready_line(42)), Some(Startup::Ready { storer_pid: 42 }));
        assert_eq!(
            parse(&error_line("key", "bad\nmode")),
            Some(Startup::Failed { stage: "key".into(), message: "bad mode".into() })
        );
        assert_eq!(parse("garbage"), None);
    }
}
