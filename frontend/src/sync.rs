//! Config sync between the service's nodes. (issue 3: for now, n/a on a
//! single node.)

use ferry_core::config::ServiceConfig;
use ferry_core::status::ResourceStatus;

pub async fn status(_cfg: &ServiceConfig, _node: &str) -> Vec<ResourceStatus> {
    Vec::new()
}
