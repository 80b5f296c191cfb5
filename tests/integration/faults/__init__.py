"""The fault suite: the relay's promises under faults a shop meets in production (issue 11)."""
