"""Bucket policies: the JSON policy language as S3 defines it, compiled once and evaluated per request.

A policy is checked when it is stored (MalformedPolicy for what S3 refuses) and compiled into statements whose
principals, actions and resources are sets and regexes, so evaluating a 20-statement policy costs microseconds.
`evaluate` answers "Deny" (an explicit deny: it wins over everything), "Allow", or None (no statement applies:
the ACLs decide)."""

from __future__ import annotations

import functools
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services.walrus.s3.conditions import (
    BadCondition,
    Condition,
    Lookup,
    compile_block,
    has_variables,
    substitute,
    variable_names,
)
from services.walrus.s3.conditions import wildcard as wildcard_regex

MAX_POLICY_BYTES = 20 * 1024  # S3's limit on a bucket policy
MAX_STATEMENTS = 1000
REACHING_ENTRIES = 4096
DECIDED_ENTRIES = 16384
EXISTING_TAG = "s3:existingobjecttag/"  # condition keys are kept in lower case
STATEMENT_FIELDS = frozenset(
    "Sid Effect Principal NotPrincipal Action NotAction Resource NotResource Condition".split()
)
VERSIONS = ("2012-10-17", "2008-10-17")
_ACCOUNT = re.compile(r"\d{12}")
_IAM_ARN = re.compile(r"arn:aws:iam::(\d{12}):(root|user/(.+))")
# Condition keys whose value ties a statement to known callers: a wildcard principal limited by one is not public.
_FIXING_KEYS = frozenset(
    {"aws:sourceip", "aws:sourcearn", "aws:sourceaccount", "aws:sourcevpc", "aws:sourcevpce", "aws:principalaccount",
     "aws:principalarn", "aws:userid", "aws:principalorgid", "aws:sourceowner", "s3:dataaccesspointaccount"}
)  # fmt: skip


class MalformedPolicy(ValueError):
    pass


class Caller(NamedTuple):
    """Who asks, as the policy language sees it (a tuple: it keys the decision caches)."""

    account_id: str  # "" for anonymous
    user_name: str = ""
    is_cloud: bool = False


@dataclass(frozen=True)
class Principals:
    anyone: bool = False
    accounts: frozenset[str] = frozenset()
    users: frozenset[tuple[str, str]] = frozenset()  # (account, user name)

    def match(self, caller: Caller) -> bool:
        if self.anyone:
            return True
        if not caller.account_id:
            return False
        return caller.account_id in self.accounts or (caller.account_id, caller.user_name) in self.users


@dataclass(frozen=True)
class Matcher:
    """Action or resource patterns; literal ones in a set, wildcard ones as regexes, variables resolved late."""

    literal: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    late: tuple[str, ...]  # patterns holding ${...}
    ignore_case: bool

    def match(self, value: str, lookup: Lookup) -> bool:
        probe = value.lower() if self.ignore_case else value
        if probe in self.literal:
            return True
        for pattern in self.patterns:
            if pattern.fullmatch(probe):
                return True
        for late in self.late:
            if wildcard_regex(substitute(late, lookup), self.ignore_case).fullmatch(value):
                return True
        return False


def _matcher(values: list[str], ignore_case: bool) -> Matcher:
    literal, patterns, late = set(), [], []
    for value in values:
        if has_variables(value):
            late.append(value)
        elif "*" in value or "?" in value:
            patterns.append(wildcard_regex(value.lower() if ignore_case else value, ignore_case))
        else:
            literal.add(value.lower() if ignore_case else value)
    return Matcher(frozenset(literal), tuple(patterns), tuple(late), ignore_case)


@dataclass(frozen=True)
class Statement:
    sid: str
    allow: bool
    principals: Principals
    not_principal: bool
    actions: Matcher
    not_action: bool
    resources: Matcher
    not_resource: bool
    conditions: tuple[Condition, ...]

    @property
    def keys(self) -> frozenset[str]:
        """Every condition key the statement's outcome can depend on (conditions and policy variables)."""
        found = {c.key for c in self.conditions}
        for late in self.resources.late:
            found |= variable_names(late)
        for condition in self.conditions:
            if condition.variables:
                for value in condition.values:
                    found |= variable_names(value)
        return frozenset(found)

    def reaches(self, caller: Caller, action: str) -> bool:
        """Whether the statement names this caller and action (both known before the request's details)."""
        if self.principals.match(caller) == self.not_principal:
            return False
        return self.actions.match(action, _no_variables) != self.not_action

    def applies(self, caller: Caller, action: str, resource: str, lookup: Lookup) -> bool:
        return self.reaches(caller, action) and self.holds(resource, lookup)

    def holds(self, resource: str, lookup: Lookup) -> bool:
        """The resource and the conditions, for a statement that `reaches` the request."""
        if self.resources.match(resource, lookup) == self.not_resource:
            return False
        for condition in self.conditions:
            if not condition.test(lookup):
                return False
        return True

    @property
    def public(self) -> bool:
        """An Allow that reaches anyone: a wildcard principal (or NotPrincipal) without a fixing condition."""
        if not self.allow or not (self.principals.anyone or self.not_principal):
            return False
        if self.not_principal and self.principals.anyone:
            return False
        for condition in self.conditions:
            if condition.key in _FIXING_KEYS and condition.operator not in ("NotIpAddress", "StringNotEquals"):
                if condition.key == "aws:sourceip" and any(v.prefixlen == 0 for v in condition.values):
                    continue
                return False
        return True


_UNDECIDED = object()


def _frozen(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return values if values is None or isinstance(values, tuple) else tuple(values)


def _no_variables(name: str) -> list[str] | None:
    return None  # actions hold no policy variables (checked when the policy is stored)


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    # (caller, action) -> the statements that reach it (Deny first) and the condition keys they read: most of a
    # policy is settled by who asks for what, which repeats from request to request.
    _reaching: dict[tuple[Caller, str], tuple[tuple[Statement, ...], tuple[str, ...]]] = field(
        default_factory=dict, compare=False
    )
    # Decisions already made: the outcome is a function of the caller, action, resource and the values of the
    # keys the reaching statements read, so a request that repeats another (the same object, client, second)
    # is answered from here.
    _decided: dict[tuple[Any, ...], str | None] = field(default_factory=dict, compare=False)

    def evaluate(self, caller: Caller, action: str, resource: str, lookup: Lookup) -> str | None:
        reached = self._reaching.get((caller, action))
        if reached is None:
            found = [s for s in self.statements if s.reaches(caller, action)]
            ordered = tuple(s for s in found if not s.allow) + tuple(s for s in found if s.allow)
            read: set[str] = set()
            for statement in ordered:
                read |= statement.keys
            reached = (ordered, tuple(sorted(read)))
            if len(self._reaching) >= REACHING_ENTRIES:
                self._reaching.clear()
            self._reaching[(caller, action)] = reached
        statements, keys = reached
        if not statements:
            return None
        memo_key = (caller, action, resource, tuple([_frozen(lookup(key)) for key in keys]))
        known = self._decided.get(memo_key, _UNDECIDED)
        if known is not _UNDECIDED:
            return known  # type: ignore[return-value]
        decision = None
        for statement in statements:  # the Deny statements first, so the first that holds decides
            if statement.holds(resource, lookup):
                decision = "Allow" if statement.allow else "Deny"
                break
        if len(self._decided) >= DECIDED_ENTRIES:
            self._decided.clear()
        self._decided[memo_key] = decision
        return decision

    @property
    def public(self) -> bool:
        return any(s.public for s in self.statements)

    @functools.cached_property
    def reads_existing_tags(self) -> bool:
        """Some condition asks for an object's stored tags (s3:ExistingObjectTag/<key>), which cost a read."""
        return any(key.startswith(EXISTING_TAG) for s in self.statements for key in s.keys)


def _list(value: Any, what: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise MalformedPolicy(f"Policy has an invalid {what}")
    return values


def _principals(value: Any) -> Principals:
    if value == "*":
        return Principals(anyone=True)
    if not isinstance(value, dict) or not value:
        raise MalformedPolicy("Invalid principal in policy")
    accounts, users, anyone = set(), set(), False
    for kind, entries in value.items():
        if kind not in ("AWS", "CanonicalUser"):
            raise MalformedPolicy("Invalid principal in policy")
        for entry in _list(entries, "principal"):
            match = _IAM_ARN.fullmatch(entry)
            if entry == "*":
                anyone = True
            elif _ACCOUNT.fullmatch(entry):
                accounts.add(entry)
            elif kind == "AWS" and match:
                if match.group(3):
                    users.add((match.group(1), match.group(3)))
                else:
                    accounts.add(match.group(1))
            else:
                raise MalformedPolicy("Invalid principal in policy")
    return Principals(anyone, frozenset(accounts), frozenset(users))


def _actions(values: list[str]) -> Matcher:
    for action in values:
        if action != "*" and not re.fullmatch(r"s3:[A-Za-z0-9*?]+", action):
            raise MalformedPolicy("Policy has invalid action")
    return _matcher(values, ignore_case=True)


def _resources(values: list[str], bucket: str) -> Matcher:
    for resource in values:
        if resource == "*":
            continue
        if not resource.startswith("arn:aws:s3:::"):
            raise MalformedPolicy("Policy has invalid resource")
        named = resource[len("arn:aws:s3:::") :].split("/", 1)[0]
        if not has_variables(named) and not wildcard_regex(named).fullmatch(bucket):
            raise MalformedPolicy("Policy has invalid resource")
    return _matcher(values, ignore_case=False)


def _one_of(raw: dict[str, Any], name: str) -> tuple[Any, bool]:
    positive, negative = raw.get(name), raw.get("Not" + name)
    if (positive is None) == (negative is None):
        raise MalformedPolicy(f"Policy statement must contain exactly one of {name} and Not{name}")
    return (positive, False) if positive is not None else (negative, True)


def _statement(raw: Any, bucket: str) -> Statement:
    if not isinstance(raw, dict):
        raise MalformedPolicy("Statement must be an object")
    unknown = set(raw) - STATEMENT_FIELDS
    if unknown:
        raise MalformedPolicy(f"Unknown field {sorted(unknown)[0][:64]}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicy("Invalid effect: " + str(effect)[:32])
    principal, not_principal = _one_of(raw, "Principal")
    action, not_action = _one_of(raw, "Action")
    resource, not_resource = _one_of(raw, "Resource")
    try:
        conditions = compile_block(raw["Condition"]) if "Condition" in raw else ()
    except BadCondition as err:
        raise MalformedPolicy(str(err)) from None
    return Statement(
        sid=str(raw.get("Sid", "")),
        allow=effect == "Allow",
        principals=_principals(principal),
        not_principal=not_principal,
        actions=_actions(_list(action, "action")),
        not_action=not_action,
        resources=_resources(_list(resource, "resource"), bucket),
        not_resource=not_resource,
        conditions=conditions,
    )


def parse(text: str | bytes, bucket: str) -> Policy:
    """Check and compile a policy for `bucket`; MalformedPolicy says what S3 would say."""
    if len(text) > MAX_POLICY_BYTES:
        raise MalformedPolicy(f"Policies must be at most {MAX_POLICY_BYTES} bytes")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise MalformedPolicy("Policies must be valid JSON and the first byte must be '{'") from None
    if not isinstance(document, dict):
        raise MalformedPolicy("Policies must be valid JSON and the first byte must be '{'")
    if "Version" in document and document["Version"] not in VERSIONS:
        raise MalformedPolicy("The policy must contain a valid version string")
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise MalformedPolicy(f"Unknown field {sorted(unknown)[0][:64]}")
    raw = document.get("Statement")
    statements = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else None
    if not statements or len(statements) > MAX_STATEMENTS:
        raise MalformedPolicy("Missing required field Statement")
    return Policy(tuple(_statement(s, bucket) for s in statements))


_compiled: OrderedDict[tuple[str, str], Policy] = OrderedDict()


def compiled(text: str, bucket: str) -> Policy:
    """The compiled form of a stored policy, kept while it is in use."""
    key = (bucket, text)
    found = _compiled.get(key)
    if found is None:
        found = _compiled[key] = parse(text, bucket)
        if len(_compiled) > 1024:
            _compiled.popitem(last=False)
    return found
