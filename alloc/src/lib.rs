//! farmem-alloc: filled by its own issue.
