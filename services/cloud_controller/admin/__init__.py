"""The admin web pages at /admin/ on the Cloud Controller (issue 9).

- `app`: routes, sign-in, sessions, CSRF checks, rendering and failure messages,
- `passwords`: scrypt hashes of the admin logins in `admin-logins.json` in the CLC's state directory
  (first start: login `admin`, random password in `admin/web-password`; `koala admin set-password` changes it),
- `sessions`, `csrf`, `ratelimit`: the session store, CSRF tokens, the failed sign-in limit,
- `backend`: finds the CLC's parts (compute engine, identity); `pages/*`: one module per page.

Every action calls the same service code as the EC2 API. `install(service)` adds the routes to the service's app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.cloud_controller.admin.app import Admin

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService


def install(service: CloudControllerService) -> Admin:
    from services.cloud_controller.admin.pages import register_all

    admin = Admin(service, service.config.KOALA_STATE_DIR)
    register_all(admin)
    admin.install(service.app)
    return admin
