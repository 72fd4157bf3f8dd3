//! The configured apps with their parsed keys: which app a callback belongs to.

use weiling_proto::callback::AppKeys;
use weiling_proto::callback::cipher::KeyError;

use crate::config::AppSettings;

/// All configured apps, looked up by app id.
pub struct Apps(Vec<AppKeys>);

impl Apps {
    pub fn from_settings(apps: &[AppSettings]) -> Result<Self, KeyError> {
        apps.iter()
            .map(|a| {
                AppKeys::with_rotation(
                    &a.app_id,
                    a.callback_tokens(),
                    a.aes_keys(),
                    a.check_receive_id,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn new(apps: Vec<AppKeys>) -> Self {
        Self(apps)
    }

    pub fn get(&self, app_id: &str) -> Option<&AppKeys> {
        self.0.iter().find(|a| a.app_id() == app_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AppKeys> {
        self.0.iter()
    }
}
