//! Validation of user-entered text, shared by the domain types of every service.

use crate::error::ApiError;

/// Trims `raw` and checks it has 1 to `max` characters and no control characters but
/// line breaks and tabs (a NUL cannot even be stored); the error names `field`.
pub fn bounded(field: &'static str, raw: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let length = trimmed.chars().count();
    if length == 0 || length > max {
        return Err(ApiError::Validation {
            field: field.to_owned(),
            message: format!("{field} must be 1 to {max} characters after trimming (got {length})"),
        });
    }
    if let Some(control) = trimmed
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::Validation {
            field: field.to_owned(),
            message: format!(
                "{field} must not contain control characters (found U+{:04X})",
                u32::from(control)
            ),
        });
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn trims_and_counts_characters_not_bytes() {
        assert_eq!(bounded("title", "  hi  ", 5).unwrap(), "hi");
        assert_eq!(bounded("title", "ééééé", 5).unwrap(), "ééééé");
        assert!(bounded("title", "   ", 5).is_err());
        let error = bounded("title", "abcdef", 5).unwrap_err();
        assert!(error.to_string().contains("title"));
        assert!(bounded("content", "two\nlines\tand a tab", 50).is_ok());
        for bad in ["nul \u{0} inside", "bell \u{7}", "escape \u{1b}[31m"] {
            let error = bounded("content", bad, 50).unwrap_err();
            assert!(error.to_string().contains("control characters"), "{bad:?}");
        }
    }
}
