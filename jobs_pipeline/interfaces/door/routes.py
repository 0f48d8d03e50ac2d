"""Every route of the door, for the admin API to include (none in its OpenAPI document)."""

from fastapi import APIRouter

from jobs_pipeline.interfaces.door import graphql_passage, signing_in, socket_relay

router = APIRouter(include_in_schema=False)
router.include_router(signing_in.router)
router.include_router(graphql_passage.router)
router.include_router(socket_relay.router)
