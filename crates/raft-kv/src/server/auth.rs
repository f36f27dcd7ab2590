//! etcd's `Auth` service, which raft-kv does not serve: every method answers gRPC
//! `Unimplemented` naming itself (`raft-kv does not serve Auth.UserAdd`), so that etcdctl's
//! `auth`, `user` and `role` commands say why they fail.

#[allow(clippy::wildcard_imports)]
use super::*;

/// `etcdserverpb.Auth`: nothing served.
pub struct AuthService;

/// Implements a generated service trait whose methods all answer [`unserved`] with the
/// method's etcd name.
macro_rules! unserved_service {
    ($service:ty: $service_trait:path {
        $($method:ident($request:ident) -> $response:ident = $name:literal;)*
    }) => {
        #[tonic::async_trait]
        impl $service_trait for $service {
            $(
                async fn $method(
                    &self,
                    _request: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    Err(unserved($name))
                }
            )*
        }
    };
}

unserved_service!(AuthService: pb::auth_server::Auth {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse = "Auth.AuthEnable";
    auth_disable(AuthDisableRequest) -> AuthDisableResponse = "Auth.AuthDisable";
    authenticate(AuthenticateRequest) -> AuthenticateResponse = "Auth.Authenticate";
    user_add(AuthUserAddRequest) -> AuthUserAddResponse = "Auth.UserAdd";
    user_get(AuthUserGetRequest) -> AuthUserGetResponse = "Auth.UserGet";
    user_list(AuthUserListRequest) -> AuthUserListResponse = "Auth.UserList";
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse = "Auth.UserDelete";
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse =
        "Auth.UserChangePassword";
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse =
        "Auth.UserGrantRole";
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse =
        "Auth.UserRevokeRole";
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse = "Auth.RoleAdd";
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse = "Auth.RoleGet";
    role_list(AuthRoleListRequest) -> AuthRoleListResponse = "Auth.RoleList";
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse = "Auth.RoleDelete";
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse =
        "Auth.RoleGrantPermission";
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse =
        "Auth.RoleRevokePermission";
});
