"""Images: list, make public or private, deregister; the registry's own calls (ModifyImageAttribute's launch
permission, DeregisterImage) as the cloud administrator."""

from __future__ import annotations

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Page

BACK = "/admin/images"


async def show(page: Page) -> web.StreamResponse:
    registry = page.service.compute.images
    principal = await page.principal()
    return page.render("images.html", images=registry.visible(principal.account_id, True))


async def visibility(page: Page) -> web.StreamResponse:
    registry = page.service.compute.images
    principal = await page.principal()
    image = registry.owned(page.field("image_id", 32), principal.account_id, True)
    public = page.field("public", 1) == "1"
    change = [{"Group": "all"}]
    await registry.modify_launch_permission(image, change if public else [], [] if public else change)
    page.flash("ok", f"Image {image.image_id} is now {'public' if public else 'private'}.")
    return page.redirect(BACK)


async def deregister(page: Page) -> web.StreamResponse:
    registry = page.service.compute.images
    principal = await page.principal()
    image_id = page.field("image_id", 32)
    await registry.deregister(image_id, principal.account_id, True)
    page.flash("ok", f"Image {image_id} was deregistered.")
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.post(BACK + "/visibility", visibility, back=BACK)
    admin.post(BACK + "/deregister", deregister, back=BACK)
