"""`/docs` of every component loads nothing from outside: each script, style sheet and image the page
names is served by the component itself (a browser test on a machine without network comes with
the dashboard)."""

from __future__ import annotations

import re

import httpx

from infrax.config import CORE_COMPONENTS as COMPONENTS


async def test_docs_pages_name_only_their_own_assets(start_stack) -> None:
    infrax = await start_stack()
    for component in COMPONENTS:
        async with httpx.AsyncClient(base_url=str(infrax[component].base_url)) as anonymous:
            for path, marker in (("/docs", "swagger-ui"), ("/redoc", "redoc")):
                page = await anonymous.get(path)
                assert page.status_code == 200 and marker in page.text, (component, path)
                names = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
                names += re.findall(r"""url: ?["']([^"']+)["']""", page.text)  # the OpenAPI document
                names += re.findall(r"""spec-url=["']([^"']+)["']""", page.text)
                assert names and not [n for n in names if "://" in n or n.startswith("//")], (component, names)
                for name in names:
                    assert (await anonymous.get(name)).status_code == 200, (component, name)
