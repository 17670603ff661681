"""POST /v1/files (multipart: file, purpose), GET /v1/files, GET/DELETE /v1/files/{file_id},
GET /v1/files/{file_id}/content. The work is in jobs/files.py.

The handlers are plain functions, so FastAPI runs them in its thread pool: copying and checking an upload of
hundreds of MiB never holds up the event loop (and each opens its own database connection, as db.py asks)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from tunelab.jobs import files
from tunelab.serve.protocol import FileDeleted, FileList, FileObject
from tunelab.serve.routes.common import service_of

router = APIRouter()


def file_object(row: files.FileRow) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose)


@router.post("/v1/files", response_model=FileObject)
def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> FileObject:
    settings = service_of(request).settings
    row = files.save_upload(settings.serve_dir, file.filename or "upload", purpose, file.file,
                            settings.max_file_bytes)
    return file_object(row)


@router.get("/v1/files", response_model=FileList)
def list_files(request: Request, purpose: str | None = None, after: str | None = None,
               limit: int = Query(files.MAX_LIST, ge=1, le=files.MAX_LIST),
               order: Literal["asc", "desc"] = "desc") -> FileList:
    page = files.list_files(service_of(request).settings.serve_dir, purpose, after, limit, order)
    data = [file_object(row) for row in page.rows]
    return FileList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                    has_more=page.has_more)


@router.get("/v1/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, request: Request) -> FileObject:
    return file_object(files.get_file(service_of(request).settings.serve_dir, file_id))


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, request: Request) -> FileResponse:
    path = files.file_path(service_of(request).settings.serve_dir, file_id)
    return FileResponse(path, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, request: Request) -> FileDeleted:
    return FileDeleted(id=files.delete_file(service_of(request).settings.serve_dir, file_id).id)
