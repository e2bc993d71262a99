//! Rendered pages of the view, reused until the view changes. Rendering 1,000 posts
//! with their comments as JSON costs milliseconds of database time; a page that did not
//! change since it was rendered costs a hash lookup.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::metrics::QUERY;

/// `?limit=` and `?before=` of a `GET /posts`.
pub type PageKey = (Option<i64>, Option<String>);

/// Few pages are popular (the whole view, the first page); `before` cursors are many.
const MAX_PAGES: usize = 16;

#[derive(Default)]
pub struct ViewCache {
    generation: AtomicU64,
    pages: Mutex<HashMap<PageKey, (u64, Bytes)>>,
    /// One render at a time: a burst of readers after a change waits for one render
    /// instead of running the same query side by side.
    rendering: tokio::sync::Mutex<()>,
}

impl ViewCache {
    /// Called after a transaction that changed the view committed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub async fn page<E, F, Fut>(&self, key: PageKey, render: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        if let Some(page) = self.fresh(&key) {
            QUERY.looked_up("hit");
            return Ok(page);
        }
        let _rendering = self.rendering.lock().await;
        if let Some(page) = self.fresh(&key) {
            // Rendered by the reader this one waited for.
            QUERY.looked_up("hit");
            return Ok(page);
        }
        QUERY.looked_up("miss");
        // Read before rendering: a change that commits during the render bumps the
        // generation, so this page is never served as current after it.
        let generation = self.generation.load(Ordering::SeqCst);
        let page = Bytes::from(render().await?);
        if let Ok(mut pages) = self.pages.lock() {
            if pages.len() >= MAX_PAGES {
                pages.retain(|_, (g, _)| *g == generation);
                if pages.len() >= MAX_PAGES {
                    pages.clear();
                }
            }
            pages.insert(key, (generation, page.clone()));
        }
        Ok(page)
    }

    fn fresh(&self, key: &PageKey) -> Option<Bytes> {
        let current = self.generation.load(Ordering::SeqCst);
        let pages = self.pages.lock().ok()?;
        pages
            .get(key)
            .filter(|(generation, _)| *generation == current)
            .map(|(_, page)| page.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn render(text: &str) -> Result<String, ()> {
        Ok(text.to_owned())
    }

    #[tokio::test]
    async fn a_page_is_reused_until_the_view_changes() {
        let cache = ViewCache::default();
        let key: PageKey = (Some(10), None);
        assert_eq!(cache.page(key.clone(), || render("a")).await.unwrap(), "a");
        assert_eq!(cache.page(key.clone(), || render("b")).await.unwrap(), "a");
        cache.invalidate();
        assert_eq!(cache.page(key.clone(), || render("c")).await.unwrap(), "c");
        assert_eq!(cache.page((None, None), || render("d")).await.unwrap(), "d");
    }

    #[tokio::test]
    async fn a_change_committed_during_a_render_makes_that_render_stale() {
        let cache = ViewCache::default();
        let rendered = cache
            .page((None, None), || async {
                cache.invalidate();
                Ok::<_, ()>("old".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(rendered, "old");
        let next = cache.page((None, None), || render("new")).await.unwrap();
        assert_eq!(next, "new");
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let cache = ViewCache::default();
        for n in 0..100 {
            cache.page((Some(n), None), || render("p")).await.unwrap();
        }
        assert!(cache.pages.lock().unwrap().len() <= MAX_PAGES);
    }
}
