//! Submitted fields: an `application/x-www-form-urlencoded` body or a query string.

use crate::accounts::Actions;
use crate::manage::ManageError;

pub struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    pub fn parse(bytes: &[u8]) -> Fields {
        Fields {
            pairs: form_urlencoded::parse(bytes).into_owned().collect(),
        }
    }

    pub fn of_query(query: Option<&str>) -> Fields {
        Fields::parse(query.unwrap_or("").as_bytes())
    }

    /// The first value of a field, trimmed; "" when absent.
    pub fn text(&self, name: &str) -> &str {
        self.raw(name).map_or("", str::trim)
    }

    /// The first value of a field as sent (passwords keep their spaces).
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every non-empty value of a field (checkboxes, multiple selects).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(key, value)| key == name && !value.trim().is_empty())
            .map(|(_, value)| value.trim())
            .collect()
    }

    /// The ticked `action` boxes (pull, push, delete) of a robot or token form.
    pub fn actions(&self) -> Result<Actions, ManageError> {
        Actions::parse(&self.all("action").join(",")).map_err(ManageError::Invalid)
    }

    /// A field that names one of a fixed set of words (a role, a visibility).
    pub fn choice<T: std::str::FromStr<Err = String>>(&self, name: &str) -> Result<T, ManageError> {
        self.text(name).parse().map_err(ManageError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_by_name() {
        let fields =
            Fields::parse(b"user=+alice+&password=a+b%20c&action=pull&action=&action=push");
        assert_eq!(fields.text("user"), "alice");
        assert_eq!(fields.raw("password"), Some("a b c"));
        assert_eq!(fields.all("action"), ["pull", "push"]);
        assert_eq!(fields.text("missing"), "");
        assert_eq!(Fields::of_query(None).raw("x"), None);
        let actions = fields.actions().unwrap();
        assert!(actions.pull && actions.push && !actions.delete);
        assert!(Fields::parse(b"action=fly").actions().is_err());
    }
}
