//! farmem-uffd: filled by its own issue.
