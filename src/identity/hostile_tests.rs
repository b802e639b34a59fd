//! The hostile-token suite (issue 4 item 5), validator level.
