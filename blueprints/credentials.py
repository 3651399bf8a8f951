"""``/api/v1/credentials``: a user's own exchange credentials (stored encrypted, never returned)."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify

from app_extensions.credentials import get_credentials
from app_extensions.services import get_services
from blueprints.common import load_body
from blueprints.credentials_schemas import CredentialsBody
from core.errors import NotFound
from services.upstream.credentials import UserCredentials

credentials_blueprint = Blueprint("credentials", __name__, url_prefix="/api/v1")
BODY = CredentialsBody()


@credentials_blueprint.put("/credentials/<provider>")
async def put_credentials(provider: str) -> Response:
    owner = get_credentials(current_app)
    user = owner.require_user()
    owner.market_of(get_services(current_app).markets, provider)
    body = await load_body(BODY)
    await owner.store.put(user, UserCredentials(provider, body["api_key"], body["secret"],
                                                body["password"], body["testnet"]))
    await get_services(current_app).markets.forget_user(user, provider)  # closes the old instance
    return Response("", status=204)


@credentials_blueprint.get("/credentials")
async def list_credentials() -> Response:
    owner = get_credentials(current_app)
    return jsonify({"credentials": await owner.store.list(owner.require_user())})


@credentials_blueprint.delete("/credentials/<provider>")
async def delete_credentials(provider: str) -> Response:
    owner = get_credentials(current_app)
    user = owner.require_user()
    if not await owner.store.delete(user, provider):
        raise NotFound(f"no credentials stored for {provider!r}")
    await get_services(current_app).markets.forget_user(user, provider)
    return Response("", status=204)
