//! A request's class: interactive (someone waits: a search) or bulk (a background job:
//! indexing a library). Queues serve interactive first and refuse bulk first. From the
//! `herd-priority` header, else KServe's `priority` parameter (Triton's levels: 1 is
//! the highest, larger numbers lower; 0 means the default), else interactive.

use std::collections::HashMap;

use herd_proto::inference::infer_parameter::ParameterChoice;
use herd_proto::inference::InferParameter;

/// The gRPC header (and HTTP header) that names a request's class.
pub const HEADER: &str = "herd-priority";
/// KServe's request parameter.
pub const PARAMETER: &str = "priority";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    #[default]
    Interactive,
    Bulk,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Bulk => "bulk",
        }
    }

    /// As a number on the wire between herd's processes: 0 interactive, 1 bulk.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    pub fn from_u32(n: u32) -> Priority {
        if n == 0 {
            Priority::Interactive
        } else {
            Priority::Bulk
        }
    }
}

/// The class a request asks for: the header if given, else the parameter, else
/// interactive. A value that names no class is an error, said back to the caller.
pub fn of(
    header: Option<&[u8]>,
    parameters: &HashMap<String, InferParameter>,
) -> Result<Priority, String> {
    if let Some(value) = header {
        let text = std::str::from_utf8(value).unwrap_or("").trim();
        return match text.to_ascii_lowercase().as_str() {
            "interactive" => Ok(Priority::Interactive),
            "bulk" => Ok(Priority::Bulk),
            _ => Err(format!(
                "header {HEADER} is {:?}: use \"interactive\" or \"bulk\"",
                crate::limits::quoted_name(text)
            )),
        };
    }
    let Some(choice) = parameters
        .get(PARAMETER)
        .and_then(|p| p.parameter_choice.as_ref())
    else {
        return Ok(Priority::Interactive);
    };
    let level = match choice {
        ParameterChoice::Int64Param(n) if *n >= 0 => *n as u64,
        ParameterChoice::Uint64Param(n) => *n,
        _ => {
            return Err(format!(
                "parameter {PARAMETER:?} must be a whole number of 0 or more (1 = interactive, \
                 larger = bulk)"
            ))
        }
    };
    Ok(if level <= 1 {
        Priority::Interactive
    } else {
        Priority::Bulk
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(choice: ParameterChoice) -> HashMap<String, InferParameter> {
        HashMap::from([(
            PARAMETER.to_string(),
            InferParameter {
                parameter_choice: Some(choice),
            },
        )])
    }

    #[test]
    fn the_header_wins_then_the_parameter_then_interactive() {
        let none = HashMap::new();
        assert_eq!(of(None, &none), Ok(Priority::Interactive));
        assert_eq!(of(Some(b"bulk"), &none), Ok(Priority::Bulk));
        assert_eq!(of(Some(b" Interactive "), &none), Ok(Priority::Interactive));
        let bulk = param(ParameterChoice::Int64Param(2));
        assert_eq!(of(None, &bulk), Ok(Priority::Bulk));
        assert_eq!(of(Some(b"interactive"), &bulk), Ok(Priority::Interactive));
        for level in [0, 1] {
            assert_eq!(
                of(None, &param(ParameterChoice::Uint64Param(level))),
                Ok(Priority::Interactive)
            );
        }
    }

    #[test]
    fn a_value_that_names_no_class_is_refused_with_the_choices() {
        let e = of(Some(b"urgent"), &HashMap::new()).expect_err("no such class");
        assert!(e.contains("\"urgent\"") && e.contains("\"bulk\""), "{e}");
        let e = of(None, &param(ParameterChoice::StringParam("high".into())))
            .expect_err("not a number");
        assert!(e.contains("whole number"), "{e}");
        assert!(of(None, &param(ParameterChoice::Int64Param(-1))).is_err());
    }
}
