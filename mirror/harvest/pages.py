"""CSV page bodies -> Arrow tables typed by the service's column metadata."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv

from mirror.catalogue.types import ColumnSpec, arrow_type
from mirror.errors import PermanentError


def parse_csv(body: bytes, specs: Sequence[ColumnSpec], url: str = "") -> pa.Table:
    """Parse a TAP CSV answer; the header must name exactly the columns asked for."""
    head = body[:1024].lstrip()[:200]  # never copy a whole page just to look at its start
    if head.startswith(b"<"):
        raise PermanentError(f"{url} answered with XML/HTML where CSV was asked for",
                             "the service may not support FORMAT=csv; set mode or check url",
                             url=url)
    if not body or body.isspace():
        raise PermanentError(f"{url} answered an empty body where CSV was asked for", url=url)
    names = [s.name for s in specs]
    try:
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1,
                                           block_size=4 << 20),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={s.name: arrow_type(s) for s in specs},
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PermanentError(f"{url}: the CSV answer does not match the service's own column "
                             f"metadata: {str(exc).splitlines()[0]}",
                             "report this to the service, or set mode = \"async\"",
                             url=url) from exc
    _check_header(body, names, url)
    return table


def _check_header(body: bytes, names: Sequence[str], url: str) -> None:
    first = body.split(b"\n", 1)[0].decode("utf-8", "replace").strip().strip("\ufeff")
    got = [h.strip().strip('"').lower() for h in first.split(",")]
    if got != [n.lower() for n in names]:
        raise PermanentError(f"{url}: the CSV columns {got[:5]}... are not the ones asked for",
                             "the service renamed or reordered columns; run the sync again",
                             url=url)


def parse_ids(body: bytes, url: str = "") -> pa.Array:
    """A one-column CSV of IDs -> an Arrow string array."""
    if body[:1024].lstrip()[:1] == b"<":
        raise PermanentError(f"{url} answered XML/HTML where CSV was asked for", url=url)
    table = pacsv.read_csv(
        io.BytesIO(body), read_options=pacsv.ReadOptions(column_names=["id"], skip_rows=1),
        convert_options=pacsv.ConvertOptions(column_types={"id": pa.string()}))
    return table.column("id").combine_chunks()
