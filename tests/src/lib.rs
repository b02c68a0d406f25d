//! farmem-tests: filled by its own issue.
