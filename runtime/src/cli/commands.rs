//! The client's command language: one command a line.

use peerlink_core::client::{Command, GroupOp, Query};
use peerlink_core::ids::{GroupName, NamePrefix, PeerId, Target};
use peerlink_core::wire::{json_string_len, DEFAULT_MAX_FRAME_LEN, FRAME_OVERHEAD};

/// The help text printed by `help`.
pub(crate) const HELP: &str = "\
commands (names are case-insensitive):
  REGISTER                      register this peer (again after reconnects, automatically)
  SEND_MSG <peer|group> <text>  send <text> to a peer or to every member of a group
  CREATE_GROUP <group>          create a group; you are its first member
  JOIN_GROUP <group>            join a group
  LEAVE_GROUP <group>           leave a group
  WHO <name>                    is <name> a peer (online? last seen?), a group, or nothing
  PEERS [prefix] [after=<id>] [limit=<n>]
                                list registered peers, sorted, a page at a time
                                (refused where the directory is private)
  GROUPS [prefix] [after=<group>] [limit=<n>]
                                list groups with their sizes, a page at a time
  MEMBERS <group> [after=<id>] [limit=<n>]
                                list the members of a group you belong to
  WATCH <peer>                  be told when <peer> comes online or goes offline
  UNWATCH <peer>                stop watching <peer>
  help                          show this help
  quit                          wait for answers to what was sent, then exit";

/// One line of input, understood.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A command for the client.
    Command(Command),
    /// Show the help.
    Help,
    /// Stop reading input.
    Quit,
    /// Nothing to do.
    Blank,
}

/// Parses one input line; the error says what is wrong, for a person.
pub(crate) fn parse(line: &str) -> Result<Line, String> {
    let line = line.trim_start();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let group = |op: GroupOp| -> Result<Line, String> {
        let name = single_argument(word, rest, "<group>")?;
        let group = GroupName::new(name).map_err(|e| e.to_string())?;
        Ok(Line::Command(Command::Group(op, group)))
    };
    match word.to_ascii_uppercase().as_str() {
        "" => Ok(Line::Blank),
        "REGISTER" if rest.trim().is_empty() => Ok(Line::Command(Command::Register)),
        "REGISTER" => Err("REGISTER takes no arguments".into()),
        "SEND_MSG" => {
            let (to, body) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if to.is_empty() || body.is_empty() {
                return Err("usage: SEND_MSG <peer|group> <text>".into());
            }
            let to = Target::new(to).map_err(|e| e.to_string())?;
            // Refused here, once, rather than sent and refused by the
            // router (or cut off as a frame too large) again and again.
            let limit = DEFAULT_MAX_FRAME_LEN - FRAME_OVERHEAD;
            let size = json_string_len(body);
            if size > limit {
                return Err(format!(
                    "the message takes {size} bytes as a JSON string; at most {limit} fit in a frame"
                ));
            }
            Ok(Line::Command(Command::Send {
                to,
                body: body.to_owned(),
            }))
        }
        "WHO" => {
            let name = single_argument(word, rest, "<name>")?;
            let name = Target::new(name).map_err(|e| e.to_string())?;
            Ok(Line::Command(Command::Query(Query::Who(name))))
        }
        "WATCH" | "UNWATCH" => {
            let peer = single_argument(word, rest, "<peer>")?;
            let peer = PeerId::new(peer).map_err(|e| e.to_string())?;
            let query = if word.eq_ignore_ascii_case("WATCH") {
                Query::Watch(peer)
            } else {
                Query::Unwatch(peer)
            };
            Ok(Line::Command(Command::Query(query)))
        }
        "PEERS" | "GROUPS" => {
            let usage = format!(
                "usage: {} [prefix] [after=<name>] [limit=<n>]",
                word.to_ascii_uppercase()
            );
            let page = page_arguments(rest, true, &usage)?;
            let prefix = page
                .first
                .map(NamePrefix::new)
                .transpose()
                .map_err(|e| e.to_string())?;
            let query = if word.eq_ignore_ascii_case("PEERS") {
                let after = page
                    .after
                    .map(PeerId::new)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                Query::Peers {
                    prefix,
                    after,
                    limit: page.limit,
                }
            } else {
                let after = page
                    .after
                    .map(GroupName::new)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                Query::Groups {
                    prefix,
                    after,
                    limit: page.limit,
                }
            };
            Ok(Line::Command(Command::Query(query)))
        }
        "MEMBERS" => {
            let usage = "usage: MEMBERS <group> [after=<id>] [limit=<n>]";
            let page = page_arguments(rest, false, usage)?;
            let group = GroupName::new(page.first.unwrap_or_default()).map_err(|e| e.to_string())?;
            let after = page
                .after
                .map(PeerId::new)
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok(Line::Command(Command::Query(Query::Members {
                group,
                after,
                limit: page.limit,
            })))
        }
        "CREATE_GROUP" => group(GroupOp::Create),
        "JOIN_GROUP" => group(GroupOp::Join),
        "LEAVE_GROUP" => group(GroupOp::Leave),
        "HELP" => Ok(Line::Help),
        "QUIT" | "EXIT" => Ok(Line::Quit),
        _ => Err(format!("unknown command {word:?}; type help for the list")),
    }
}

/// The arguments of a listing: a leading word (a prefix, optional, or a
/// group, required), then `after=` and `limit=` in any order.
struct PageArguments<'a> {
    first: Option<&'a str>,
    after: Option<&'a str>,
    limit: Option<u32>,
}

fn page_arguments<'a>(rest: &'a str, first_optional: bool, usage: &str) -> Result<PageArguments<'a>, String> {
    let mut page = PageArguments {
        first: None,
        after: None,
        limit: None,
    };
    for (i, word) in rest.split_whitespace().enumerate() {
        if let Some(after) = word.strip_prefix("after=") {
            if page.after.replace(after).is_some() {
                return Err(format!("after= given twice; {usage}"));
            }
        } else if let Some(limit) = word.strip_prefix("limit=") {
            let limit = limit
                .parse::<u32>()
                .ok()
                .filter(|l| *l >= 1)
                .ok_or_else(|| format!("limit must be a whole number from 1; {usage}"))?;
            if page.limit.replace(limit).is_some() {
                return Err(format!("limit= given twice; {usage}"));
            }
        } else if i == 0 {
            page.first = Some(word);
        } else {
            return Err(usage.to_owned());
        }
    }
    if page.first.is_none() && !first_optional {
        return Err(usage.to_owned());
    }
    Ok(page)
}

fn single_argument<'a>(word: &str, rest: &'a str, what: &str) -> Result<&'a str, String> {
    let rest = rest.trim();
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("usage: {} {what}", word.to_ascii_uppercase()));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(line: &str) -> Query {
        match parse(line) {
            Ok(Line::Command(Command::Query(query))) => query,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn parses_discovery_commands() {
        assert_eq!(query("who bob"), Query::Who(Target::new("bob").unwrap()));
        assert_eq!(
            query("PEERS"),
            Query::Peers {
                prefix: None,
                after: None,
                limit: None
            }
        );
        assert_eq!(
            query("PEERS al limit=2 after=al2"),
            Query::Peers {
                prefix: Some(NamePrefix::new("al").unwrap()),
                after: Some(PeerId::new("al2").unwrap()),
                limit: Some(2)
            }
        );
        assert_eq!(
            query("GROUPS after=dev"),
            Query::Groups {
                prefix: None,
                after: Some(GroupName::new("dev").unwrap()),
                limit: None
            }
        );
        assert_eq!(
            query("MEMBERS devs after=bob"),
            Query::Members {
                group: GroupName::new("devs").unwrap(),
                after: Some(PeerId::new("bob").unwrap()),
                limit: None
            }
        );
        assert_eq!(query("watch bob"), Query::Watch(PeerId::new("bob").unwrap()));
        assert_eq!(query("UNWATCH bob"), Query::Unwatch(PeerId::new("bob").unwrap()));
        for (line, error) in [
            ("WHO", "usage: WHO <name>"),
            ("WHO a b", "usage: WHO <name>"),
            ("WATCH b@d", "invalid name"),
            ("PEERS al al2", "usage: PEERS"),
            ("PEERS limit=0", "limit must be"),
            ("PEERS limit=x", "limit must be"),
            ("PEERS after=a after=b", "after= given twice"),
            ("MEMBERS", "usage: MEMBERS"),
            ("MEMBERS after=bob", "usage: MEMBERS"),
            ("GROUPS sp@ce", "invalid name"),
        ] {
            let message = parse(line).unwrap_err();
            assert!(message.contains(error), "{line}: {message}");
        }
    }

    #[test]
    fn a_body_too_large_for_a_frame_is_refused_before_sending() {
        let limit = DEFAULT_MAX_FRAME_LEN - FRAME_OVERHEAD;
        // As a JSON string: two quotes around the text.
        let fits = "x".repeat(limit - 2);
        assert!(matches!(
            parse(&format!("SEND_MSG bob {fits}")),
            Ok(Line::Command(_))
        ));
        let refused = parse(&format!("SEND_MSG bob {fits}x")).unwrap_err();
        assert!(refused.contains("at most"), "{refused}");
        // A quote takes two bytes escaped: 600,000 of them do not fit.
        let quotes = "\"".repeat(600_000);
        assert!(parse(&format!("SEND_MSG bob {quotes}")).is_err());
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("REGISTER"), Ok(Line::Command(Command::Register)));
        assert_eq!(parse("  register  "), Ok(Line::Command(Command::Register)));
        assert_eq!(
            parse("SEND_MSG bob hello   there"),
            Ok(Line::Command(Command::Send {
                to: Target::new("bob").unwrap(),
                body: "hello   there".into()
            }))
        );
        assert_eq!(
            parse("join_group g1"),
            Ok(Line::Command(Command::Group(
                GroupOp::Join,
                GroupName::new("g1").unwrap()
            )))
        );
        assert!(matches!(
            parse("CREATE_GROUP g"),
            Ok(Line::Command(Command::Group(GroupOp::Create, _)))
        ));
        assert!(matches!(
            parse("LEAVE_GROUP g"),
            Ok(Line::Command(Command::Group(GroupOp::Leave, _)))
        ));
        assert_eq!(parse("help"), Ok(Line::Help));
        assert_eq!(parse("quit"), Ok(Line::Quit));
        assert_eq!(parse("   "), Ok(Line::Blank));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(parse("SEND_MSG bob").unwrap_err().contains("usage"));
        assert!(parse("SEND_MSG").unwrap_err().contains("usage"));
        assert!(parse("SEND_MSG b@d hi").unwrap_err().contains("invalid name"));
        assert!(parse("JOIN_GROUP").unwrap_err().contains("usage"));
        assert!(parse("JOIN_GROUP a b").unwrap_err().contains("usage"));
        assert!(parse("REGISTER now").is_err());
        assert!(parse("FLY away").unwrap_err().contains("unknown command"));
    }
}
