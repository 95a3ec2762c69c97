"""Human-readable rendering of policy decisions, for `mfaproxy policy explain`. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mfaproxy.config.policies import AccessPoliciesConfig
from mfaproxy.core.policy import (
    Decision,
    PolicyContext,
    PolicyStatus,
    PolicyTrace,
    Tri,
    early_login_denial,
    evaluate,
)

_RESULT_LABEL = {Tri.MATCH: "match", Tri.NO_MATCH: "no match", Tri.UNKNOWN: "unknown"}
_OUTCOME_LABEL = {Tri.MATCH: "matched", Tri.NO_MATCH: "not matched", Tri.UNKNOWN: "unknown"}


@dataclass(frozen=True)
class Explanation:
    """Everything `policy explain` shows for one request."""

    early_denial: Decision | None  # the login target before the password check
    login: Decision
    mfa: Decision


def explain_request(config: AccessPoliciesConfig, ctx: PolicyContext, now: datetime) -> Explanation:
    """Evaluate both targets (the mfa one even when login denies, to show it)."""
    return Explanation(
        early_denial=early_login_denial(config.login, ctx, now),
        login=evaluate(config.login, ctx, now),
        mfa=evaluate(config.mfa, ctx, now),
    )


def _known(value: object, shown: str) -> str:
    return "unknown" if value is None else shown


def _station(raw: str | None) -> str:
    return "(not given)" if raw is None else repr(raw[:64])


def render_context(ctx: PolicyContext, now: datetime) -> list[str]:
    groups = ", ".join(sorted(ctx.groups)) if ctx.groups else "(none)"
    admin = "yes" if ctx.is_administrator else "no"
    rows = [
        ("user", _known(ctx.user, repr(ctx.user))),
        ("client", f"{ctx.client} (source address {ctx.client_address})"),
        ("NAS-IP-Address", str(ctx.nas_ip_address or "(not given)")),
        ("Calling-Station-Id", _station(ctx.calling_station_id)),
        ("groups", _known(ctx.groups, groups)),
        ("backend", _known(ctx.backend, str(ctx.backend))),
        ("administrator", _known(ctx.is_administrator, admin)),
        ("geo-IP", "database loaded" if ctx.country_lookup else "no database"),
        ("time", now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC (%a)")),
    ]
    return ["Request:"] + [f"  {label:<19} {value}" for label, value in rows]


def _headline(decision: Decision) -> str:
    by = f'policy "{decision.policy}"' if decision.policy else "the default action"
    line = f"{decision.target}: {decision.action} (by {by})"
    if not decision.definite:
        others = ", ".join(a for a in decision.possible if a != decision.action)
        line += f"; unknown input could also give {others}, the strictest applies"
    return line


def _policy_lines(number: int, trace: PolicyTrace) -> list[str]:
    head = f"  [{number}] {trace.name}"
    if trace.status is not PolicyStatus.EVALUATED or trace.outcome is None:
        return [f"{head}: {trace.status.value}"]
    actions = " or ".join(trace.actions)
    lines = [
        f"{head} (validation {trace.validation}): {_OUTCOME_LABEL[trace.outcome]} -> {actions}"
    ]
    if not trace.rules:
        lines.append("      (no rules: always matches)")
    lines.extend(
        f"      {_RESULT_LABEL[r.result]:<9} rules[{r.index}] {r.type}: {r.reason}"
        for r in trace.rules
    )
    return lines


def render_decision(decision: Decision, default_action: str) -> list[str]:
    lines = [_headline(decision)]
    # Numbered from 0 like the dotted paths of the configuration (policies.0.rules.1).
    for number, trace in enumerate(decision.trace):
        lines.extend(_policy_lines(number, trace))
    reached = "applies" if decision.default_reached else "not reached"
    lines.append(f"  default: {default_action} ({reached})")
    return lines


def _early_line(early: Decision | None) -> str:
    if early is None:
        return "Before the password check: not decided, the password is checked first."
    by = f'policy "{early.policy}"' if early.policy else "the default action"
    return f"Before the password check: rejected by {by}, the password is not checked."


def render(
    explanation: Explanation, config: AccessPoliciesConfig, ctx: PolicyContext, now: datetime
) -> list[str]:
    lines = [*render_context(ctx, now), "", _early_line(explanation.early_denial)]
    lines += render_decision(explanation.login, config.login.default_action)
    lines.append("")
    if explanation.login.action == "access_denied":
        lines.append("(a real request stops at login; the mfa target is shown for reference)")
    lines += render_decision(explanation.mfa, config.mfa.default_action)
    return lines


def explain(config: AccessPoliciesConfig, ctx: PolicyContext, now: datetime) -> list[str]:
    """The full text of `policy explain`, one string per line."""
    return render(explain_request(config, ctx, now), config, ctx, now)
