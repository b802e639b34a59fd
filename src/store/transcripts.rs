//! Transcript text for `sessions search`: one row per output line with its
//! time offset, in SQLite FTS5 (`transcript_fts`) or a PostgreSQL tsvector
//! column with a GIN index (`transcript_lines`).

use serde::Serialize;
use sqlx::Row;

use super::{Backend, Store, StoreError};

/// Longest line kept in the index, in characters.
const MAX_LINE_CHARS: usize = 4096;

/// Most hits one search returns.
const MAX_HITS: i64 = 1000;

/// One line of a transcript that matched.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TranscriptHit {
    /// Session id.
    pub session_id: String,
    /// Seconds from the start of the recording to the line.
    pub offset_seconds: f64,
    /// The line, escape sequences stripped.
    pub text: String,
}

impl Store {
    /// Indexes a session's transcript lines (`(offset seconds, text)`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn index_transcript(
        &self,
        session_id: &str,
        lines: &[(f64, String)],
    ) -> Result<(), StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO transcript_fts (text, session_id, offset_seconds) VALUES ($1, $2, $3)"
            }
            Backend::Postgres => {
                "INSERT INTO transcript_lines (text, session_id, offset_seconds) VALUES ($1, $2, $3)"
            }
        };
        let mut tx = self.pool.begin().await?;
        for (offset, text) in lines {
            let text: String = text.chars().take(MAX_LINE_CHARS).collect();
            if text.trim().is_empty() {
                continue;
            }
            sqlx::query(sql)
                .bind(text)
                .bind(session_id)
                .bind(*offset)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Lines whose words contain `text` as a phrase, by session then time;
    /// at most 1000.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn search_transcripts(&self, text: &str) -> Result<Vec<TranscriptHit>, StoreError> {
        let rows = match self.backend {
            Backend::Sqlite => {
                // An FTS5 phrase: the text in double quotes, quotes doubled.
                let phrase = format!("\"{}\"", text.replace('"', "\"\""));
                sqlx::query(
                    "SELECT session_id, offset_seconds, text FROM transcript_fts \
                     WHERE transcript_fts MATCH $1 ORDER BY session_id, offset_seconds LIMIT $2",
                )
                .bind(phrase)
                .bind(MAX_HITS)
                .fetch_all(&self.pool)
                .await?
            }
            Backend::Postgres => {
                sqlx::query(
                    "SELECT session_id, offset_seconds, text FROM transcript_lines \
                     WHERE tsv @@ phraseto_tsquery('simple', $1) \
                     ORDER BY session_id, offset_seconds LIMIT $2",
                )
                .bind(text)
                .bind(MAX_HITS)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| TranscriptHit {
                session_id: r.get("session_id"),
                offset_seconds: r.get("offset_seconds"),
                text: r.get("text"),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use crate::store::tests::temp_store;

    #[tokio::test]
    async fn phrases_are_found_with_their_offsets() {
        let (_dir, store) = temp_store().await;
        store
            .index_transcript(
                "s1",
                &[(0.5, "~ # rm -rf /tmp/x".into()), (1.25, "done".into())],
            )
            .await
            .unwrap();
        store
            .index_transcript("s2", &[(3.0, "nothing \"here\"".into())])
            .await
            .unwrap();
        let hits = store.search_transcripts("rm -rf").await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].session_id, "s1");
        assert_eq!(hits[0].offset_seconds, 0.5);
        assert_eq!(hits[0].text, "~ # rm -rf /tmp/x");
        assert!(store.search_transcripts("absent").await.unwrap().is_empty());
        // Quotes in the query are text, not FTS syntax.
        let quoted = store.search_transcripts("\"here\"").await.unwrap();
        assert_eq!(quoted.len(), 1);
        assert_eq!(quoted[0].session_id, "s2");
    }
}
