//! The job definition's retry strategy is defined once (`embatch_formats::run::retry_strategy`);
//! the CloudFormation and Terraform job definitions must say exactly the same, in the same order
//! (the first matching rule decides), with the same default number of attempts. The emulated
//! Batch player builds its job definition from the rules themselves.

use std::path::Path;

use embatch_formats::run::retry_strategy::{self, On};

/// `(field, pattern, action)` as AWS names them, e.g. `("OnExitCode", "75", "RETRY")`.
type Rule = (String, String, String);

fn expected() -> Vec<Rule> {
    retry_strategy::RULES
        .iter()
        .map(|rule| {
            let (field, pattern) = rule.pattern();
            (field.to_string(), pattern, rule.action().to_string())
        })
        .collect()
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').to_string()
}

/// The `EvaluateOnExit` list of the template's job definition: `- Field: "pattern"` then
/// `Action: X`, until the indentation falls back.
fn cloudformation_rules(template: &str) -> Vec<Rule> {
    let mut lines = template
        .lines()
        .skip_while(|l| l.trim() != "EvaluateOnExit:");
    let header = lines.next().expect("the template has EvaluateOnExit");
    let indent = header.len() - header.trim_start().len();
    let mut rules = Vec::new();
    let mut field = None;
    for line in lines {
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if line.len() - line.trim_start().len() <= indent {
            break;
        }
        let (key, value) = text
            .trim_start_matches("- ")
            .split_once(':')
            .unwrap_or_else(|| panic!("an EvaluateOnExit line is `Key: value`: {line:?}"));
        if key == "Action" {
            let (f, p) = field.take().expect("a field before each Action");
            rules.push((f, p, unquote(value)));
        } else {
            field = Some((key.to_string(), unquote(value)));
        }
    }
    rules
}

/// The `evaluate_on_exit` blocks of the module's job definition, fields in AWS's names.
fn terraform_rules(module: &str) -> Vec<Rule> {
    let start = module
        .find("retry_strategy {")
        .expect("the module has retry_strategy");
    let mut rules = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in module[start..].lines().skip(1) {
        let text = line.trim();
        if text.starts_with('#') || text.is_empty() || text.starts_with("attempts") {
            continue;
        }
        if text == "evaluate_on_exit {" {
            block.clear();
        } else if text == "}" {
            if block.is_empty() {
                break; // the end of retry_strategy
            }
            let action = block
                .iter()
                .find(|(k, _)| k == "action")
                .map(|(_, v)| v.to_uppercase())
                .expect("every evaluate_on_exit has an action");
            let (key, pattern) = block
                .iter()
                .find(|(k, _)| k != "action")
                .cloned()
                .expect("every evaluate_on_exit matches something");
            let field = match key.as_str() {
                "on_status_reason" => "OnStatusReason",
                "on_exit_code" => "OnExitCode",
                "on_reason" => "OnReason",
                other => panic!("unknown evaluate_on_exit field {other}"),
            };
            rules.push((field.to_string(), pattern, action));
            block.clear();
        } else {
            let (key, value) = text.split_once('=').expect("`key = value`");
            block.push((key.trim().to_string(), unquote(value)));
        }
    }
    rules
}

fn default_after(text: &str, anchor: &str, key: &str) -> i32 {
    let rest = &text[text
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor} is declared"))..];
    let line = rest
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("{anchor} has a {key}"));
    let value = line.split_once([':', '=']).expect("key and value").1;
    value.trim().parse().expect("a number")
}

#[test]
fn both_stacks_retry_exactly_as_the_one_definition_says() {
    let cloudformation = read("deploy/cloudformation/embatch.yaml");
    let terraform = read("deploy/terraform/modules/embatch/main.tf");
    assert_eq!(
        cloudformation_rules(&cloudformation),
        expected(),
        "CloudFormation"
    );
    assert_eq!(terraform_rules(&terraform), expected(), "Terraform");
    let variables = read("deploy/terraform/modules/embatch/variables.tf");
    assert_eq!(
        default_after(&cloudformation, "  RetryAttempts:", "Default"),
        retry_strategy::ATTEMPTS
    );
    assert_eq!(
        default_after(&variables, "variable \"retry_attempts\"", "default"),
        retry_strategy::ATTEMPTS
    );
}

#[test]
fn the_parsers_see_a_changed_rule() {
    let template = read("deploy/cloudformation/embatch.yaml").replacen(
        "- OnExitCode: \"143\"",
        "- OnExitCode: \"144\"",
        1,
    );
    assert_ne!(cloudformation_rules(&template), expected());
    let module = read("deploy/terraform/modules/embatch/main.tf").replacen(
        "action           = \"retry\"",
        "action           = \"exit\"",
        1,
    );
    assert_ne!(terraform_rules(&module), expected());
    // The rules themselves: a transient exit is retried, a permanent one is not.
    let first_match = |code: i32| {
        retry_strategy::RULES
            .iter()
            .find(|r| matches!(r.on, On::ExitCode(c) if c == code) || r.on == On::AnyExitCode)
            .map(|r| r.retry)
    };
    assert_eq!(first_match(75), Some(true));
    assert_eq!(first_match(143), Some(true));
    assert_eq!(first_match(2), Some(false));
}
