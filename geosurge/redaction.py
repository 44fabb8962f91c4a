"""What may be shown of a URI: in logs, MLflow params and tags, quarantine details, `config.yaml`. Credentials in
`user:pass@` and in credential-bearing query parameters (presigned URLs, tokens) become REDACTED. The ground floor,
so that the config can redact itself when it is logged."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlparse

# Query parameters that carry a credential: presigned S3/GCS/Azure URLs, OAuth-style tokens, API keys.
_SECRET_PARAM = re.compile(r"(?i)(signature|credential|security-token|token|secret|password|passwd|api[-_]?key|"
                           r"^key$|^sig$|^se$|^sp$|^sv$|^skoid$|^sktid$|accesskeyid)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
REDACTED = "REDACTED"


def redact_uri(uri: str) -> str:
    """`uri` (or any text holding URIs, e.g. an error message) as it may be logged: `user:pass@` and the values of
    credential-bearing query parameters (X-Amz-Signature, X-Amz-Credential, tokens, keys) replaced by REDACTED."""
    return _URL_IN_TEXT.sub(lambda m: _redact_one(m.group(0)), uri) if isinstance(uri, str) else uri


def _redact_one(url: str) -> str:
    # edits the text in place: a round trip through urlunparse would turn sqlite:////abs/path into sqlite://abs/path
    try:
        parsed = urlparse(url)
    except ValueError:
        return url
    out = url
    if "@" in parsed.netloc:
        out = out.replace(parsed.netloc.rsplit("@", 1)[0] + "@", f"{REDACTED}@", 1)
    if parsed.query:
        pairs = parse_qsl(parsed.query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="/:")
            out = out.replace(parsed.query, query, 1)
    return out
