"""Pure pieces, table-driven: source URIs, safe names, manifests."""

from __future__ import annotations

import pytest
from glowplug_worker.prefetch.errors import SourceError, UnsafePathError, UsageError
from glowplug_worker.prefetch.httpsrc import MANIFEST_SCHEMA, parse_manifest
from glowplug_worker.prefetch.options import effective_revision, parse_optimizations, parse_source
from glowplug_worker.prefetch.retry import backoff_delay
from glowplug_worker.prefetch.safepath import safe_relpath


class TestParseSource:
    @pytest.mark.parametrize(
        ("raw", "scheme", "location", "revision", "canonical"),
        [
            ("hf://org/name", "hf", "org/name", None, "hf://org/name"),
            ("hf://org/name@v1.2", "hf", "org/name", "v1.2", "hf://org/name"),
            ("hf://gpt2", "hf", "gpt2", None, "hf://gpt2"),
            ("HTTPS://h/x.bin", "https", "HTTPS://h/x.bin", None, "HTTPS://h/x.bin"),
            ("s3://bucket/a/b/", "s3", "bucket/a/b/", None, "s3://bucket/a/b/"),
            ("s3://bucket", "s3", "bucket/", None, "s3://bucket/"),
            ("pvc://claim/dir/", "pvc", "claim/dir", None, "pvc://claim/dir"),
            ("file:///mnt/w%20x", "file", "/mnt/w x", None, "file:///mnt/w x"),
        ],
    )
    def test_accepted(
        self, raw: str, scheme: str, location: str, revision: str | None, canonical: str
    ) -> None:
        src = parse_source(raw)
        assert (src.scheme, src.location, src.revision, src.canonical) == (
            scheme,
            location,
            revision,
            canonical,
        )

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "org/name",
            "gs://b/x",
            "hf://org/name@",
            "hf://a/b/c",
            "https:///x",
            "s3:///x",
            "pvc:///x",
            "pvc://claim/../..",
            "pvc://claim/a/../../b",
            "file://rel/x",
        ],
    )
    def test_refused_with_usage_error(self, raw: str) -> None:
        with pytest.raises(UsageError, match="--source"):
            parse_source(raw)

    def test_revision_flag_and_at_revision_must_agree(self) -> None:
        src = parse_source("hf://a/b@main")
        assert effective_revision(src, None) == "main"
        assert effective_revision(src, "main") == "main"
        assert effective_revision(parse_source("hf://a/b"), "v2") == "v2"
        with pytest.raises(UsageError, match="contradicts"):
            effective_revision(src, "v2")

    def test_optimizations(self) -> None:
        assert parse_optimizations(" a, prefetch-page-cache ,,") == ("a", "prefetch-page-cache")
        assert parse_optimizations(None) == ()


class TestSafeRelpath:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("a.bin", "a.bin"),
            ("./a/./b.bin", "a/b.bin"),
            ("a//b", "a/b"),
            ("a/.glowplug", "a/.glowplug"),
        ],
    )
    def test_normalized(self, name: str, expected: str) -> None:
        assert safe_relpath(name) == expected

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "C:x",
            "a\\b",
            "a\x00b",
            ".",
            "./",
            ".glowplug-complete.json",
            ".glowplug-parts/x",
        ],
    )
    def test_refused(self, name: str) -> None:
        with pytest.raises(UnsafePathError, match="refused"):
            safe_relpath(name)


class TestManifest:
    URL = "http://h/m/manifest.json"

    def entry(self, **kw: object) -> dict[str, object]:
        return {"path": "w.bin", "size": 3, "sha256": "A" * 64, **kw}

    def test_urls_resolve_relative_to_the_manifest_and_digests_lowercase(self) -> None:
        plan = parse_manifest(
            {
                "schema": MANIFEST_SCHEMA,
                "revision": "r1",
                "files": [
                    self.entry(),
                    self.entry(path="d/x y.bin", url="../other/x"),
                    self.entry(path="abs", url="https://cdn/x?sig=1"),
                ],
            },
            self.URL,
        )
        assert [f.locator for f in plan.files] == [
            "http://h/m/w.bin",
            "http://h/other/x",
            "https://cdn/x?sig=1",
        ]
        assert plan.files[0].sha256 == "a" * 64
        assert plan.resolved_revision == "r1"

    @pytest.mark.parametrize(
        ("files", "words"),
        [
            ([], "non-empty list"),
            (["x"], "files[0] must be an object"),
            ([{"size": 1, "sha256": "a" * 64}], "files[0].path must be a string"),
            ([{"path": "a", "size": -1, "sha256": "a" * 64}], "files[0].size"),
            ([{"path": "a", "size": True, "sha256": "a" * 64}], "files[0].size"),
            ([{"path": "a", "size": 1, "sha256": "xyz"}], "files[0].sha256 must be 64 hex"),
            ([{"path": "a", "size": 1, "sha256": "a" * 64}] * 2, "appears twice"),
        ],
    )
    def test_mistakes_name_the_entry_and_field(self, files: list[object], words: str) -> None:
        with pytest.raises(SourceError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_manifest({"schema": MANIFEST_SCHEMA, "files": files}, self.URL)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    for n, base in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)):
        for _ in range(20):
            assert base / 2 <= backoff_delay(n) <= base
