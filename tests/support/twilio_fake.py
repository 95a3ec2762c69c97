"""A local fake of Twilio's Messages API, for the real twilio SDK to talk to in tests.

Usage::

    with TwilioFake() as twilio:            # listens on 127.0.0.1:<free port>
        config = TwilioConfig(account_sid=twilio.account_sid, auth_token=twilio.auth_token,
                              from_number="+15005550006", base_url=twilio.base_url)
        ...                                  # send through the SDK
        [sms] = twilio.wait_for(1)           # SentSms(to, from_, messaging_service_sid, body...)

What it serves: ``GET /2010-04-01/Accounts/{AccountSid}.json`` (the account, for a
credentials check) and ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with a
form-encoded body (``To``, ``From`` or ``MessagingServiceSid``, ``Body``), behind HTTP
Basic auth with the account SID and auth token. It answers as Twilio does:

- 201 and a message resource (``sid`` "SM...", ``status`` "queued", or "accepted" when
  a Messaging Service picks the sender, ``to``, ``from``, ``body``...);
- 401 / code 20003 for missing or wrong credentials; 404 / 20404 for another account's
  path; 400 with 21604 (no To), 21603 (no From nor MessagingServiceSid), 21602 (no Body),
  21211 (To is not an E.164 number). Errors are ``{code, message, more_info, status}``.

Knobs: ``fail_with(status, code, message)`` makes every following request fail that way
(``fail_with(None)`` stops it); ``hang = True`` holds requests unanswered until the fake
stops (for client timeouts). ``requests`` counts every POST received, ``messages`` keeps
the accepted ones.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web

from tests.support.ports import free_port

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-auth-token-0123456789abcdef"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True)
class SentSms:
    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str


@dataclass(frozen=True)
class TwilioError:
    status: int
    code: int
    message: str

    def response(self) -> web.Response:
        return web.json_response(
            {
                "code": self.code,
                "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
                "status": self.status,
            },
            status=self.status,
        )


class TwilioFake:
    def __init__(
        self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.port = free_port()
        self.messages: list[SentSms] = []
        self.requests = 0
        self.hang = False
        self._failure: TwilioError | None = None
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_with(self, status: int | None, code: int = 0, message: str = "") -> None:
        with self._cond:
            self._failure = None if status is None else TwilioError(status, code, message)

    def wait_for(self, count: int, timeout: float = 30) -> list[SentSms]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} messages, got {len(self.messages)}")
            return list(self.messages)

    # ----------------------------------------------------------------- HTTP

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(
            f"{user}:{password}".encode(), f"{self.account_sid}:{self.auth_token}".encode()
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        with self._cond:
            self.requests += 1
            failure = self._failure
        if self.hang and self._stop is not None:
            await self._stop.wait()
            return web.Response(status=503)
        if failure is not None:
            return failure.response()
        if not self._authorised(request):
            return TwilioError(401, 20003, "Authenticate").response()
        account = request.match_info["account"]
        if account != self.account_sid:
            return TwilioError(404, 20404, "The requested resource was not found").response()
        form = await request.post()
        problem = self._invalid(form)
        if problem is not None:
            return problem.response()
        return web.json_response(self._accept(account, form), status=201)

    async def _account(self, request: web.Request) -> web.StreamResponse:
        """GET the account resource: what a credentials check fetches."""
        with self._cond:
            self.requests += 1
            failure = self._failure
        if failure is not None:
            return failure.response()
        if not self._authorised(request):
            return TwilioError(401, 20003, "Authenticate").response()
        account = request.match_info["account"]
        if account != self.account_sid:
            return TwilioError(404, 20404, "The requested resource was not found").response()
        now = formatdate(usegmt=True)
        return web.json_response(
            {
                "sid": account,
                "friendly_name": "mfaproxy tests",
                "status": "active",
                "type": "Full",
                "date_created": now,
                "date_updated": now,
                "owner_account_sid": account,
                "uri": f"/2010-04-01/Accounts/{account}.json",
            }
        )

    @staticmethod
    def _invalid(form: Any) -> TwilioError | None:
        to = form.get("To")
        if not to:
            return TwilioError(400, 21604, "A 'To' phone number is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return TwilioError(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return TwilioError(400, 21602, "Message body is required.")
        if not _E164.fullmatch(str(to)):
            return TwilioError(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        return None

    def _accept(self, account: str, form: Any) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        service = form.get("MessagingServiceSid")
        sms = SentSms(
            sid=sid,
            account_sid=account,
            to=str(form["To"]),
            from_=str(form["From"]) if form.get("From") else None,
            messaging_service_sid=str(service) if service else None,
            body=str(form["Body"]),
        )
        with self._cond:
            self.messages.append(sms)
            self._cond.notify_all()
        now = formatdate(usegmt=True)
        uri = f"/2010-04-01/Accounts/{account}/Messages/{sid}.json"
        return {
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": sms.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sms.from_,
            "messaging_service_sid": sms.messaging_service_sid,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            # Twilio says "accepted" while a Messaging Service still picks the sender.
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": sms.to,
            "uri": uri,
        }

    # ----------------------------------------------------------------- lifecycle

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._messages)
        app.router.add_get("/2010-04-01/Accounts/{account}.json", self._account)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()  # never leave __enter__ waiting on a server that died
            loop.close()

    def __enter__(self) -> TwilioFake:
        self._thread = threading.Thread(target=self._run, name="twilio-fake", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("Twilio fake did not start") from self._error
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)
