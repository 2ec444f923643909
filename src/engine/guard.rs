//! The mass-delete guard (the lesson of syncthing #4345 and s5cmd's `--max-delete`).
//!
//! A wrong `prefix`, an emptied or recreated bucket, or credentials for another account with a
//! same-named bucket make a listing look like "everything was deleted". On an edge box the
//! local copies may be the last ones, so before a full sync (or an event batch) deletes files,
//! the count is checked: more than `max_percent` % of the share's files *and* more than
//! `max_count` of them is refused, nothing is deleted, and the operator decides.

/// The thresholds of one share (`max_delete_percent`, `max_delete`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteLimits {
    /// 0..=100; 100 turns the percentage test off.
    pub max_percent: u8,
    pub max_count: u64,
}

impl Default for DeleteLimits {
    fn default() -> Self {
        DeleteLimits {
            max_percent: 50,
            max_count: 100,
        }
    }
}

/// Would deleting `deletes` of the share's `files` files be a mass delete?
pub fn is_mass_delete(deletes: u64, files: u64, limits: DeleteLimits) -> bool {
    let over_count = deletes > limits.max_count;
    // deletes / files > max_percent / 100, without division (files may be 0).
    let over_share = u128::from(deletes) * 100 > u128::from(files) * u128::from(limits.max_percent);
    over_count && over_share && limits.max_percent < 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_thresholds_must_be_exceeded() {
        let l = DeleteLimits::default();
        // The example: 9,812 of 10,004.
        assert!(is_mass_delete(9_812, 10_004, l));
        // Many, but a small part of a big share.
        assert!(!is_mass_delete(4_000, 10_004, l));
        // Most of a small share, but few files.
        assert!(!is_mass_delete(90, 100, l));
        assert!(!is_mass_delete(100, 150, l));
        assert!(is_mass_delete(101, 150, l));
        // Exactly half is not "more than half".
        assert!(!is_mass_delete(500, 1_000, l));
        assert!(is_mass_delete(501, 1_000, l));
    }

    #[test]
    fn limits_can_be_tightened_or_turned_off() {
        let strict = DeleteLimits {
            max_percent: 0,
            max_count: 0,
        };
        assert!(is_mass_delete(1, 1_000_000, strict));
        assert!(!is_mass_delete(0, 10, strict));
        let off = DeleteLimits {
            max_percent: 100,
            max_count: 0,
        };
        assert!(!is_mass_delete(u64::MAX, 1, off));
        assert!(!is_mass_delete(u64::MAX, 0, off));
    }
}
