"""Drives stackgate with the official Contentstack Python management SDK.
Usage: python3 python_sdk.py HOST:PORT API_KEY READ_ONLY_TOKEN READ_WRITE_TOKEN OWNER_AUTHTOKEN
Prints one line per call: <name> <status>."""
import sys
import contentstack_management

host, api_key, ro_token, rw_token, owner_authtoken = sys.argv[1:6]


def stack(token):
    client = contentstack_management.Client(host=host, scheme="http://", management_token=token, timeout=10)
    return client.stack(api_key)


ro, rw = stack(ro_token), stack(rw_token)
# The stack owner, through the token-management API (the SDK's own create/update bodies
# and headers: the gateway takes only bodies declared application/json).
owner = contentstack_management.Client(
    host=host, scheme="http://", authtoken=owner_authtoken, timeout=10).stack(api_key)
created = {}


def create_token():
    response = owner.management_token().create({"token": {
        "name": "made by the sdk",
        "scope": [{"module": "$all", "acl": {"read": True, "write": True}},
                  {"module": "branch", "branches": ["main"], "acl": {"read": True}}],
        "expires_on": None}})
    created.update(response.json().get("token", {}))
    return response


def update_token():
    return owner.management_token(created.get("uid", "none")).update(
        {"token": {"description": "read-only now",
                   "scope": [{"module": "$all", "acl": {"read": True, "write": False}},
                             {"module": "branch", "branches": ["main"], "acl": {"read": True}}]}})


def fetch_then_update_token():
    """The documented round trip: fetch a token, change a field, send the fetched record
    back (with every field the API returned: uid, timestamps, origin, ...)."""
    fetched = owner.management_token(created.get("uid", "none")).fetch().json().get("token", {})
    fetched["description"] = "fetched then updated"
    return owner.management_token(created.get("uid", "none")).update({"token": fetched})


calls = [
    ("ro_list_content_types", lambda: ro.content_types().find()),
    ("ro_fetch_content_type", lambda: ro.content_types("blog").fetch()),
    ("ro_list_entries", lambda: ro.content_types("blog").entry().find()),
    ("ro_create_entry", lambda: ro.content_types("blog").entry().create({"entry": {"title": "sdk"}})),
    ("rw_create_entry", lambda: rw.content_types("blog").entry().create({"entry": {"title": "sdk"}})),
    ("rw_list_environments", lambda: rw.environments().find()),
    ("rw_list_branches", lambda: rw.branch().find()),
    ("rw_list_tokens", lambda: rw.management_token().find()),
    ("owner_create_token", create_token),
    ("owner_update_token", update_token),
    ("owner_fetch_then_update_token", fetch_then_update_token),
]
for name, call in calls:
    try:
        print(name, call().status_code, flush=True)
    except Exception as e:  # an SDK-side error is a failure of the test, reported by name
        print(name, "error", type(e).__name__, flush=True)
