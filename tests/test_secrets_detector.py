"""SecretsDetector: one table row per credential family, placeholders, explanations, spans,
RE2 everywhere, pathological input, no disk writes, buried secrets, thread safety.

Every credential value here is synthetic: generated from a seeded RNG in the right alphabet and
length, so the formats are valid but no value is, or ever was, a real key.
"""

from __future__ import annotations

import base64
import builtins
import itertools
import json
import os
import random
import string
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]

from classifiers.engine import combine_topic_scores
from classifiers.secrets_detector import (
    DEFAULT_RULES_PATH,
    SecretsDetector,
    adapt_for_re2,
    is_placeholder,
    load_rules,
)
from promptfence.core import Finding, Span, Topic

ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"

_rng = random.Random(20260817)


def rnd(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def pem_body() -> str:
    raw = bytes(_rng.randrange(256) for _ in range(600))
    text = base64.b64encode(raw).decode()
    return "\n".join(text[i : i + 64] for i in range(0, len(text), 64))


@pytest.fixture(scope="module")
def detector() -> SecretsDetector:
    return SecretsDetector()


def credentials_score(findings: Any) -> float:
    return combine_topic_scores(findings).get(Topic.CREDENTIALS, 0.0)


# (family, the secret value, a prompt containing it)
Case = tuple[str, str, str]


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(family: str, value: str, template: str = "Why does this fail?\n{v}\nThanks") -> None:
        cases.append((family, value, template.format(v=value)))

    add("aws-access-key-id", "AKIA" + rnd("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16), "aws_access_key_id = {v}")
    add("aws-secret", rnd(B64, 40), 'aws_secret_access_key = "{v}"')
    add("gcp-api-key", "AIza" + rnd(URLSAFE, 35), "const key = '{v}';")
    add("gcp-oauth-secret", "GOCSPX-" + rnd(URLSAFE, 28), "client_secret: {v}")
    add(
        "azure-storage",
        rnd(B64, 86) + "==",
        "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey={v};EndpointSuffix=core.windows.net",
    )
    add("azure-ad-secret", rnd(ALNUM, 3) + "8Q~" + rnd(ALNUM + "_~.", 34), 'AZURE_CLIENT_SECRET="{v}"')
    add("github-pat", "ghp_" + rnd(ALNUM, 36), "git clone https://github.com/org/repo.git # token {v}")
    add("github-fine-grained", "github_pat_" + rnd(ALNUM, 22) + "_" + rnd(ALNUM, 59))
    add("gitlab-pat", "glpat-" + rnd(URLSAFE, 20), "GITLAB_TOKEN={v}")
    add("slack-bot", "xoxb-" + rnd(string.digits, 12) + "-" + rnd(string.digits, 13) + "-" + rnd(ALNUM, 24))
    add(
        "slack-webhook",
        "https://hooks.slack.com/services/T" + rnd(UPPER_ALNUM, 8) + "/B" + rnd(UPPER_ALNUM, 10) + "/" + rnd(ALNUM, 24),
    )
    add("stripe", "sk_live_" + rnd(ALNUM, 24), "stripe.api_key = '{v}'")
    add("openai", "sk-proj-" + rnd(URLSAFE, 48) + "T3BlbkFJ" + rnd(URLSAFE, 48))
    add("openai-legacy", "sk-" + rnd(ALNUM, 20) + "T3BlbkFJ" + rnd(ALNUM, 20))
    add("anthropic", "sk-ant-api03-" + rnd(URLSAFE, 93) + "AA", "ANTHROPIC_API_KEY={v}")
    add("twilio", "SK" + rnd(HEX, 32), "twilio api key sid {v}")
    add("twilio-auth-token", rnd(HEX, 32), 'TWILIO_AUTH_TOKEN = "{v}"')
    add("sendgrid", "SG." + rnd(URLSAFE, 22) + "." + rnd(URLSAFE, 43))
    add("npm", "npm_" + rnd(ALNUM, 36), "//registry.npmjs.org/:_authToken={v}")
    add("pypi", "pypi-AgEIcHlwaS5vcmc" + rnd(URLSAFE, 80), "password = {v}")
    add("huggingface", "hf_" + rnd(ALNUM, 34))
    add("groq", "gsk_" + rnd(ALNUM, 52))
    add("digitalocean", "dop_v1_" + rnd(HEX, 64))
    add("shopify", "shpat_" + rnd(HEX, 32))
    add("databricks", "dapi" + rnd(HEX, 32))
    add("atlassian", "ATATT3" + rnd(URLSAFE, 186))
    add("dockerhub", "dckr_pat_" + rnd(URLSAFE, 27))
    add("newrelic", "NRAK-" + rnd(UPPER_ALNUM, 27))
    add("telegram", rnd(string.digits, 10) + ":AA" + rnd(URLSAFE, 33))
    add("age", "AGE-SECRET-KEY-1" + rnd("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58))
    add("vault", "hvs." + rnd(URLSAFE, 90))
    add("mailchimp", rnd(HEX, 32) + "-us12")
    body = pem_body()
    add("pem-rsa", body, "-----BEGIN RSA PRIVATE KEY-----\n{v}\n-----END RSA PRIVATE KEY-----")
    add("pem-openssh", body, "```\n-----BEGIN OPENSSH PRIVATE KEY-----\n{v}\n-----END OPENSSH PRIVATE KEY-----\n```")
    add(
        "pem-json-escaped",
        body.replace("\n", "\\n"),
        '{{"private_key": "-----BEGIN PRIVATE KEY-----\\n{v}\\n-----END PRIVATE KEY-----\\n"}}',
    )
    add("password-assignment", "Tr0ub4dor&" + rnd(ALNUM, 4), 'db_password = "{v}"')
    add("password-yaml", "hunter" + rnd(string.digits, 3) + "!", "database:\n  user: app\n  password: {v}\n")
    add("password-env", "s3cr" + rnd(ALNUM, 8), "DB_PASSWORD={v}")
    add("pwd-colon", "Kx9" + rnd(ALNUM, 9), "pwd: {v}")
    add("password-flag", "Zq" + rnd(ALNUM, 10) + "#1", "mysqladmin --password={v} status")
    add("password-cli-space", "Pp" + rnd(ALNUM, 10), "./deploy.sh --password {v} --verbose")
    add("password-prose", "Bl" + rnd(ALNUM, 8), 'The admin password is "{v}" until Monday.')
    add("password-camel", "Qw" + rnd(ALNUM, 10), 'private const string ServicePfxPassword = "{v}";')
    add("url-userinfo", "pw" + rnd(ALNUM, 12), "curl https://deploy:{v}@intranet.example.org/api")
    add("postgres-uri", "Pg" + rnd(ALNUM, 14), "DATABASE_URL=postgres://app:{v}@db.internal:5432/prod")
    add("mysql-uri", "My" + rnd(ALNUM, 14), "mysql://root:{v}@10.0.0.5:3306/shop")
    add("mongodb-uri", "Mg" + rnd(ALNUM, 14), "mongodb+srv://svc:{v}@cluster0.ab1cd.mongodb.net/?retryWrites=true")
    add("redis-uri", "Rd" + rnd(ALNUM, 14), "redis://:{v}@cache.internal:6379/0")
    add("amqp-uri", "Mq" + rnd(ALNUM, 14), "amqp://guest2:{v}@rabbit.internal:5672/vhost")
    add("jdbc", "Jd" + rnd(ALNUM, 12), "jdbc:sqlserver://db01:1433;databaseName=shop;user=app;password={v};")
    add("ado-connstr", "Ad" + rnd(ALNUM, 12), "Server=tcp:db01,1433;Initial Catalog=shop;User ID=app;Password={v};")
    add(
        "azure-servicebus",
        rnd(B64, 43) + "=",
        "Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={v}",
    )
    header = b64url({"alg": "HS256", "typ": "JWT"})
    payload = b64url({"sub": rnd(string.digits, 8), "iat": 1700000000})
    add("jwt", f"{header}.{payload}.{rnd(URLSAFE, 43)}", "Authorization: Bearer {v}")
    add("jwt-bare", f"{header}.{payload}.{rnd(URLSAFE, 43)}", "token in the cookie: {v}")
    add("bearer-header", rnd(ALNUM, 40), 'curl -H "Authorization: Bearer {v}" https://api.vendor.test/v1')
    add("api-key-header", rnd(ALNUM, 32), "X-Api-Key: {v}")
    add("generic-api-key", rnd(ALNUM, 32), 'API_KEY = "{v}"')
    add("generic-secret-json", rnd(ALNUM + "-_", 40), '{{"client_secret": "{v}"}}')
    add("entropy-near-keyword", rnd(ALNUM, 40), "here is the access token for staging {v} please keep it safe")
    add("bcrypt", "$2b$12$" + rnd(ALNUM + "./", 53))
    add("sha512crypt", "$6$" + rnd(ALNUM, 8) + "$" + rnd(ALNUM + "./", 86), "root:{v}:19000:0:99999:7:::")
    return cases


CASES = _cases()


@pytest.mark.parametrize(("family", "value", "text"), CASES, ids=[c[0] for c in CASES])
def test_each_credential_family_is_detected_with_a_span_covering_the_value(
    detector: SecretsDetector, family: str, value: str, text: str
) -> None:
    findings = detector.detect(text)
    assert credentials_score(findings) >= 0.6, (family, [(f.kind, f.score) for f in findings])
    start = text.index(value)
    end = start + len(value)
    covering = [f for f in findings if f.span is not None and f.span.start <= start + 2 and f.span.end >= end - 2]
    assert covering, (family, [(f.kind, f.span) for f in findings], (start, end))
    for f in findings:
        assert f.topic is Topic.CREDENTIALS
        assert f.detector == "secrets"
        assert f.kind.startswith("secret.")
        assert 0.0 < f.score <= 1.0
        assert f.span is not None and 0 <= f.span.start < f.span.end <= len(text)


def test_explanations_never_contain_the_value_not_even_partially(detector: SecretsDetector) -> None:
    checked = 0
    for family, value, text in CASES:
        for finding in detector.detect(text):
            assert finding.span is not None
            matched = text[finding.span.start : finding.span.end]
            explanation = finding.explanation.lower()
            assert finding.kind.removeprefix("secret.") in finding.explanation  # names the rule
            assert matched.lower() not in explanation
            # Any 6 characters of the value's secret-bearing part (past a provider's public
            # prefix such as the first third of the token) must be absent from the explanation.
            s = value[len(value) // 3 :].lower()
            for i in range(max(1, len(s) - 5)):
                piece = s[i : i + 6]
                if len(piece) == 6 and piece.strip():
                    assert piece not in explanation, (family, finding.kind)
            checked += 1
    assert checked >= len(CASES)


PLACEHOLDERS = [
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    'OPENAI_API_KEY="your-api-key-here"',
    "api_key = 'YOUR_API_KEY'",
    "token: xxxxxxxxxxxxxxxxxxxxxxxx",
    "Authorization: Bearer <TOKEN>",
    "Authorization: Bearer $ACCESS_TOKEN",
    'headers = {"Authorization": f"Bearer {token}"}',
    "export GITHUB_TOKEN=${GITHUB_TOKEN}",
    "api_key = os.environ['OPENAI_API_KEY']",
    'password = os.environ.get("DB_PASSWORD")',
    "const secret = process.env.STRIPE_SECRET;",
    "password = getpass.getpass()",
    "password = request.form['password']",
    "user.password = hashed_password",
    "if password == confirm_password:",
    'password = "password"',
    'password = ""',
    "password: str",
    'DB_PASSWORD="changeme"',
    "postgres://user:password@localhost:5432/db",
    "mongodb://<username>:<password>@cluster0.example.net/",
    "redis://:${REDIS_PASSWORD}@cache:6379",
    "secret_key = '********'",
    "client_secret: '{{ vault_client_secret }}'",
    "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----\n<your private key here>\n-----END PRIVATE KEY-----",
    "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
    "xoxb-0000000000-0000000000000-xxxxxxxxxxxxxxxxxxxxxxxx",
    "The password field must be at least 12 characters long.",
    "Reset your password by clicking the link in the email.",
    "max_tokens = 4096",
    "token_type = 'bearer'",
    "public_key = load_key('id_rsa.pub')",
    "cache_key = f'user:{user_id}'",
    "See https://docs.python.org/3/library/secrets.html for token_hex().",
    "commit 3f0b8ac9d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8 fixed the build",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "id = 123e4567-e89b-12d3-a456-426614174000",
]


@pytest.mark.parametrize("text", PLACEHOLDERS)
def test_placeholders_and_references_do_not_trip_credentials(detector: SecretsDetector, text: str) -> None:
    findings = detector.detect(text)
    assert credentials_score(findings) < 0.6, [(f.kind, f.score) for f in findings]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("AKIAIOSFODNN7EXAMPLE", True),
        ("your-api-key-here", True),
        ("xxxx", True),
        ("<TOKEN>", True),
        ("${API_KEY}", True),
        ("$API_KEY", True),
        ("%API_KEY%", True),
        ("API_KEY", True),
        ("os.environ['X']", True),
        ("abcdefgh", True),
        ("12345678", True),
        ("Zq8vK2mP9xL4", False),
        ("hunter2!", False),
    ],
)
def test_placeholder_screen(value: str, expected: bool) -> None:
    assert is_placeholder(value) is expected


def test_benign_prose_and_code_yield_nothing(detector: SecretsDetector) -> None:
    texts = [
        "Write a haiku about autumn leaves and the passing of time.",
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
        "How do I rotate my AWS access keys safely? What is a good password policy?",
        "import hashlib\nh = hashlib.sha256(data).hexdigest()\nlogger.info('token count: %d', n)",
        "The quick brown fox jumps over the lazy dog. " * 50,
    ]
    for text in texts:
        assert credentials_score(detector.detect(text)) < 0.3


def test_every_rule_is_compiled_with_re2_and_rejections_are_counted(detector: SecretsDetector) -> None:
    rule_type = type(re2.compile("a"))
    assert len(detector.rules) >= 150
    for rule in detector.rules:
        assert isinstance(rule.regex, rule_type), rule.id
        assert rule.regex.pattern == rule.pattern
    own, own_rejected, _ = load_rules(DEFAULT_RULES_PATH)
    assert own_rejected == []  # our own file must compile entirely
    ds_rejected = [r for r in detector.rejected if r.source == "detect-secrets"]
    # detect-secrets 1.5.0: two mid-pattern look-aheads and one verbose pattern cannot be adapted.
    assert len(ds_rejected) == 3, ds_rejected
    assert {r.id for r in detector.rules if r.source == "detect-secrets"}  # the rest are used
    assert len(own) == len([r for r in detector.rules if r.source == "promptfence"])


def test_a_pattern_re2_cannot_compile_is_rejected_not_loaded(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rules]]\nid = 'lookbehind'\ndescription = 'x'\nregex = '''(?<=k)v'''\nscore = 0.9\n"
        "[[rules]]\nid = 'backref'\ndescription = 'x'\nregex = '''(a)\\1'''\nscore = 0.9\n"
        "[[rules]]\nid = 'fine'\ndescription = 'x'\nregex = '''\\bzz[0-9]{8}\\b'''\nscore = 0.9\n"
    )
    d = SecretsDetector(rules, use_detect_secrets=False)
    assert [r.id for r in d.rules] == ["fine"]
    assert sorted(r.id for r in d.rejected) == ["backref", "lookbehind"]


def test_detect_secrets_lookarounds_are_adapted_for_re2() -> None:
    adapted = adapt_for_re2("(?:(?<=\\W)|(?<=^))key=([a-z]{4})(?!\\w)", 0)
    regex = re2.compile(adapted)
    match = regex.search(" key=abcd ")
    assert match is not None and match.group("s") == "key=abcd" and match.group(2) == "abcd"
    assert regex.search(" key=abcde") is None


def test_the_module_uses_no_backtracking_regex_engine() -> None:
    source = Path(__file__).parents[1].joinpath("classifiers", "secrets_detector.py").read_text()
    assert "import re\n" not in source and "from re import" not in source


PATHOLOGICAL: list[Callable[[], str]] = [
    lambda: "a" * 50_000,
    lambda: "password=" * 6_000,
    lambda: "-----BEGIN RSA PRIVATE KEY-----" * 3_000,
    lambda: "x://" + ":" * 50_000 + "@",
    lambda: "eyJ" * 20_000 + ".",
    lambda: "A1b2" * 25_000,
    lambda: "secret_key" + " " * 50_000 + "=",
    lambda: "$2a$12$" * 10_000,
    lambda: "é" * 50_000 + "token=" + "9" * 50_000,
]


@pytest.mark.parametrize("make", PATHOLOGICAL)
def test_pathological_input_completes_quickly(detector: SecretsDetector, make: Callable[[], str]) -> None:
    text = make()
    started = time.perf_counter()
    findings = detector.detect(text)
    assert time.perf_counter() - started < 1.0
    assert len(findings) <= 64 * len(detector.rules)


def _document(size: int) -> str:
    paragraph = (
        "Quarterly planning notes. The team reviewed the roadmap, discussed hiring, and agreed to move "
        "the migration to next sprint. def handler(event):\n    return {'status': 200, 'items': len(event)}\n"
    )
    return (paragraph * (size // len(paragraph) + 1))[:size]


def test_secret_buried_in_a_long_document_is_found(detector: SecretsDetector) -> None:
    token = "ghp_" + rnd(ALNUM, 36)
    doc = _document(100_000)
    text = doc[:61_234] + f"\nGITHUB_TOKEN={token}\n" + doc[61_234:]
    findings = detector.detect(text)
    start = text.index(token)
    assert Span(start, start + len(token)) in [f.span for f in findings]
    assert credentials_score(findings) >= 0.85


def test_a_100kb_prompt_is_inspected_well_under_100ms(detector: SecretsDetector) -> None:
    text = _document(100_000)
    detector.detect(text)  # warm
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        detector.detect(text)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.1


def test_detection_writes_nothing_to_disk(
    detector: SecretsDetector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    writes: list[str] = []
    real_open = builtins.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(m in mode for m in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        writes.append("tempfile")
        raise AssertionError("temp file created")

    monkeypatch.setattr(builtins, "open", guarded_open)
    for name in ("NamedTemporaryFile", "TemporaryFile", "mkstemp", "mkdtemp", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, forbidden)
    monkeypatch.setattr(os, "open", forbidden)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    fresh = SecretsDetector()  # loading rules and detect-secrets plugins writes nothing either
    for _family, _value, text in CASES:
        fresh.detect(text)
        detector.detect(text)
    assert writes == []
    assert list(tmp_path.iterdir()) == []


def test_detector_is_thread_safe(detector: SecretsDetector) -> None:
    expected = {text: [f.to_dict() for f in detector.detect(text)] for _f, _v, text in CASES}
    errors: list[str] = []

    def work() -> None:
        for _ in range(3):
            for text, want in expected.items():
                got = [f.to_dict() for f in detector.detect(text)]
                if got != want:
                    errors.append(text[:20])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_findings_round_trip_and_protocol(detector: SecretsDetector) -> None:
    assert detector.name == "secrets"
    assert detector.version
    findings = detector.detect("GITHUB_TOKEN=ghp_" + rnd(ALNUM, 36))
    assert findings
    for f in findings:
        assert Finding.from_dict(f.to_dict()) == f


def test_high_entropy_alone_is_low_and_context_raises_it(detector: SecretsDetector) -> None:
    token = rnd(ALNUM, 40)
    alone = detector.detect(f"the build id was {token} yesterday")
    near = detector.detect(f"the api secret was {token} yesterday")
    assert credentials_score(alone) < 0.6
    assert credentials_score(near) >= 0.6


def test_overlapping_rules_report_each_stretch_once(detector: SecretsDetector) -> None:
    token = "ghp_" + rnd(ALNUM, 36)
    findings = detector.detect(f'GITHUB_TOKEN="{token}"')
    spans = sorted((f.span.start, f.span.end) for f in findings if f.span)
    for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
        assert e1 <= s2
