//! Check results shared by `check` (preflight) and `status`: ok / warn / fail with a
//! reason, printed as aligned text or JSON, summarised, and mapped to the exit code
//! (0 all ok, 1 warnings only, 2 any failure).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Ok,
            detail: detail.into(),
        }
    }

    pub fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Warn,
            detail: detail.into(),
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Fail,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub checks: Vec<Check>,
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub summary: String,
}

impl CheckReport {
    pub fn new(checks: Vec<Check>) -> CheckReport {
        let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
        let (ok, warn, fail) = (count(Level::Ok), count(Level::Warn), count(Level::Fail));
        let summary = format!(
            "{}: {ok} ok, {warn} warning(s), {fail} failure(s)",
            match (warn, fail) {
                (0, 0) => "all ok",
                (_, 0) => "warnings",
                _ => "FAILED",
            }
        );
        CheckReport {
            checks,
            ok,
            warn,
            fail,
            summary,
        }
    }

    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Fail => 2,
        }
    }

    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}\n",
                c.level.label(),
                c.name,
                c.detail
            ));
        }
        out.push_str(&self.summary);
        out.push('\n');
        out
    }
}
