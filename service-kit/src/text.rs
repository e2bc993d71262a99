//! Validation of user-entered text, shared by the domain types of every service.

use crate::error::ApiError;

/// Trims `raw` and checks it has 1 to `max` characters; the error names `field`.
pub fn bounded(field: &'static str, raw: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let length = trimmed.chars().count();
    if length == 0 || length > max {
        return Err(ApiError::Validation {
            field,
            message: format!("{field} must be 1 to {max} characters after trimming (got {length})"),
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
    }
}
