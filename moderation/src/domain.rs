use contract::CommentStatus;

/// Words that get a comment rejected, matched case-insensitively anywhere in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocklist(Vec<String>);

impl Blocklist {
    /// The course's rule.
    pub fn course_default() -> Self {
        Self(vec!["orange".into()])
    }

    /// From `MODERATION_BLOCKLIST`: comma-separated words.
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split(',')
                .map(|w| w.trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
        )
    }

    pub fn decide(&self, content: &str) -> CommentStatus {
        let content = content.to_lowercase();
        if self.0.iter().any(|word| content.contains(word.as_str())) {
            CommentStatus::Rejected
        } else {
            CommentStatus::Approved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_words_match_case_insensitively() {
        let list = Blocklist::course_default();
        assert_eq!(list.decide("I like ORANGE juice"), CommentStatus::Rejected);
        assert_eq!(list.decide("Oranges!"), CommentStatus::Rejected);
        assert_eq!(list.decide("apples"), CommentStatus::Approved);
        let custom = Blocklist::parse(" Spam, , eggs ");
        assert_eq!(custom, Blocklist(vec!["spam".into(), "eggs".into()]));
        assert_eq!(custom.decide("EGGS and ham"), CommentStatus::Rejected);
        assert_eq!(custom.decide("orange"), CommentStatus::Approved);
    }
}
