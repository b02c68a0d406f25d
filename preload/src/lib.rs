//! farmem-preload: filled by its own issue.
