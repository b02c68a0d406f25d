//! farmem-objrt: filled by its own issue.
