//! Rendered pages of the view, reused until the view changes. Rendering 1,000 posts
//! with their comments as JSON costs milliseconds of database time; a page that did not
//! change since it was rendered costs a hash lookup.
//!
//! The whole view, the page clients poll, is kept post by post: a change names the posts
//! it touched, the next reader reads only those again, and the page is the posts joined.
//! A change polled for is then one indexed read away, not a read of every post.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::metrics::QUERY;
use crate::store::Written;

/// `?limit=` and `?before=` of a `GET /posts`.
pub type PageKey = (Option<i64>, Option<String>);

/// Few pages are popular (the whole view, the first page); `before` cursors are many.
const MAX_PAGES: usize = 16;

/// Beyond this many changed posts, reading every post is the cheaper way back.
const MAX_STALE_POSTS: usize = 256;

#[derive(Default)]
pub struct ViewCache {
    generation: AtomicU64,
    pages: Mutex<HashMap<PageKey, (u64, Bytes)>>,
    whole: Mutex<Whole>,
    /// What this replica's own consumer changes: known at once, not from the announcement.
    own: Mutex<Own>,
    /// One render at a time: a burst of readers after a change waits for one render
    /// instead of running the same query side by side.
    rendering: tokio::sync::Mutex<()>,
    /// The whole view was read since it was last patched ahead of its readers.
    polled: AtomicBool,
    /// Wakes `keep_patched` after a change, when the whole view is being polled.
    patch_ahead: tokio::sync::Notify,
}

/// The stale posts a reader took to read again; put back if it never patches the page.
struct Reading<'a> {
    cache: &'a ViewCache,
    stale: Stale,
    patched: bool,
}

impl<'a> Reading<'a> {
    fn start(cache: &'a ViewCache) -> Self {
        let mut whole = cache.lock_whole();
        whole.reading = true;
        let stale = std::mem::take(&mut whole.stale);
        Self {
            cache,
            stale,
            patched: false,
        }
    }

    /// Patches the page with what was read of the posts taken: they are current now.
    fn patch(mut self, written: Written) -> Bytes {
        self.patched = true;
        let mut whole = self.cache.lock_whole();
        whole.reading = false;
        whole.patch(&self.stale, written);
        whole.page.clone()
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.patched {
            let mut whole = self.cache.lock_whole();
            whole.reading = false;
            whole.stale.merge(std::mem::take(&mut self.stale));
        }
    }
}

/// How the whole view was found.
enum Lookup {
    Hit,
    Patch,
    Miss,
}

/// This replica's own consumer's changes.
#[derive(Default)]
struct Own {
    /// Posts changed by a transaction that has not committed: they become stale when it
    /// commits, not before (a read before the commit would cache the post as it was).
    applying: Stale,
    /// Its changes, by seq and post: pending until it commits, then until announced.
    changes: Vec<(i64, String)>,
    /// Committed changes whose announcement is still to come: hearing one is no news,
    /// and does not make the post stale a second time.
    unheard: VecDeque<(i64, String)>,
}

/// Committed changes remembered until their announcement; beyond, the oldest are
/// forgotten (their announcement, if it ever comes, only costs a read).
const MAX_UNHEARD: usize = 1_024;

/// What of the whole view may differ from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stale {
    Posts(HashSet<String>),
    Everything,
}

impl Default for Stale {
    fn default() -> Self {
        Self::Posts(HashSet::new())
    }
}

impl Stale {
    fn add(&mut self, post: &str) {
        if let Self::Posts(posts) = self {
            posts.insert(post.to_owned());
            if posts.len() > MAX_STALE_POSTS {
                *self = Self::Everything;
            }
        }
    }

    fn merge(&mut self, other: Stale) {
        match other {
            Self::Everything => *self = Self::Everything,
            Self::Posts(posts) => posts.iter().for_each(|post| self.add(post)),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::Posts(posts) if posts.is_empty())
    }
}

/// The whole view as last read: the page, and where each post's member is in it, so
/// that a patch copies the posts it did not read again instead of keeping them twice.
struct Whole {
    stale: Stale,
    /// A reader took the stale posts and is reading them again: until it has patched the
    /// page, the page is not current even though nothing is marked stale.
    reading: bool,
    page: Bytes,
    /// Each post's place in creation order and its `"id":{…}` in `page`, in that order.
    members: Vec<(i64, Range<usize>)>,
}

impl Default for Whole {
    fn default() -> Self {
        Self {
            stale: Stale::Everything,
            reading: false,
            page: Bytes::from_static(b"{}"),
            members: Vec::new(),
        }
    }
}

impl Whole {
    /// Replaces what `read` covered by what was read of it: everything is taken as it
    /// was written; some posts, by writing the page again in one pass over the posts,
    /// copying those it did not read.
    fn patch(&mut self, read: &Stale, written: Written) {
        let Stale::Posts(posts) = read else {
            self.page = Bytes::from(written.text);
            self.members = written.members;
            return;
        };
        // A post read again replaces what was at its place.
        let mut dropped: HashSet<i64> = written.members.iter().map(|(p, _)| *p).collect();
        // One named but not read again is no longer in the database: it is found by its
        // key in the page. That is rare; an index of every post's place, kept for it,
        // cost about a quarter of the view's memory.
        let read_again: HashSet<&[u8]> = written
            .members
            .iter()
            .filter_map(|(_, at)| written.key(at))
            .collect();
        let gone: Vec<Vec<u8>> = posts
            .iter()
            .filter_map(|post| serde_json::to_vec(post).ok())
            .map(|mut key| {
                key.push(b':');
                key
            })
            .filter(|key| !read_again.contains(key.as_slice()))
            .collect();
        if !gone.is_empty() {
            dropped.extend(
                self.members
                    .iter()
                    .filter(|(_, at)| {
                        let member = &self.page[at.clone()];
                        gone.iter().any(|key| member.starts_with(key))
                    })
                    .map(|(position, _)| *position),
            );
        }
        let old = std::mem::take(&mut self.page);
        let members = std::mem::take(&mut self.members);
        let mut kept = members
            .into_iter()
            .filter(|(position, _)| !dropped.contains(position))
            .peekable();
        let mut fresh = written.members.iter().peekable();
        // Room for all of it at once: a page that grew by doubling kept up to twice its
        // size for as long as it was served.
        let mut page = Vec::with_capacity(old.len() + written.text.len());
        page.push(b'{');
        loop {
            let older = match (kept.peek(), fresh.peek()) {
                (None, None) => break,
                (Some((k, _)), Some((f, _))) => k < f,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if older {
                if let Some((position, at)) = kept.next() {
                    self.write(&mut page, position, &old[at]);
                }
            } else if let Some((position, at)) = fresh.next() {
                self.write(&mut page, *position, written.member(at));
            }
        }
        page.push(b'}');
        self.page = Bytes::from(page);
    }

    fn write(&mut self, page: &mut Vec<u8>, position: i64, member: &[u8]) {
        if page.len() > 1 {
            page.push(b',');
        }
        let at = page.len();
        page.extend_from_slice(member);
        self.members.push((position, at..page.len()));
    }
}

impl ViewCache {
    /// After a change that may have touched any post: a transaction that committed
    /// without saying which, or notifications that were missed.
    pub fn invalidate(&self) {
        self.lock_whole().stale = Stale::Everything;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.patch_ahead_if_polled();
    }

    /// After a committed change to `post` (its comments included).
    pub fn changed(&self, post: &str) {
        self.lock_whole().stale.add(post);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.patch_ahead_if_polled();
    }

    /// An announced change to `post` at `seq`: stale, unless this replica applied it
    /// itself and already knows.
    pub fn heard(&self, seq: i64, post: &str) {
        {
            let mut own = self.lock_own();
            if let Some(at) = own.unheard.iter().position(|(s, p)| *s == seq && p == post) {
                own.unheard.remove(at);
                return;
            }
        }
        self.changed(post);
    }

    /// Inside this replica's consumer transaction: it changes `post`, at `seq`.
    pub fn applying(&self, seq: i64, post: &str) {
        let mut own = self.lock_own();
        own.applying.add(post);
        own.changes.push((seq, post.to_owned()));
    }

    /// Inside this replica's consumer transaction: it changes posts it does not name.
    pub fn applying_everything(&self) {
        self.lock_own().applying = Stale::Everything;
    }

    /// This replica's consumer transaction committed: what it changed is stale now.
    pub fn committed(&self) {
        let applied = {
            let mut own = self.lock_own();
            let changes = std::mem::take(&mut own.changes);
            own.unheard.extend(changes);
            while own.unheard.len() > MAX_UNHEARD {
                own.unheard.pop_front();
            }
            std::mem::take(&mut own.applying)
        };
        self.lock_whole().stale.merge(applied);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.patch_ahead_if_polled();
    }

    /// Someone reads the whole view, and will again (clients poll it): patch it now,
    /// not when the next poll comes. At most once per read, so that a burst of changes
    /// costs no more renders than the polls would have made.
    fn patch_ahead_if_polled(&self) {
        if self.polled.swap(false, Ordering::SeqCst) {
            self.patch_ahead.notify_one();
        }
    }

    /// Patches the whole view with `read` after each change while it is being polled, so
    /// that the poll after a change finds the page current instead of reading the
    /// changed posts itself. Runs for as long as it is awaited.
    pub async fn keep_patched<E, F, Fut>(&self, mut read: F)
    where
        E: std::fmt::Debug,
        F: FnMut(Option<Vec<String>>) -> Fut,
        Fut: Future<Output = Result<Written, E>>,
    {
        loop {
            self.patch_ahead.notified().await;
            if let Err(error) = self.current(&mut read).await {
                // The next poll reads again, and says so if it fails too.
                tracing::debug!(?error, "patching the view ahead of its readers failed");
            }
        }
    }

    /// The whole view: as cached, or with its stale posts read again (`read(Some(ids))`),
    /// or read whole (`read(None)`).
    pub async fn whole<E, F, Fut>(&self, read: F) -> Result<Bytes, E>
    where
        F: FnOnce(Option<Vec<String>>) -> Fut,
        Fut: Future<Output = Result<Written, E>>,
    {
        self.polled.store(true, Ordering::SeqCst);
        let (page, lookup) = self.current(read).await?;
        QUERY.looked_up(match lookup {
            Lookup::Hit => "hit",
            Lookup::Patch => "patch",
            Lookup::Miss => "miss",
        });
        Ok(page)
    }

    async fn current<E, F, Fut>(&self, read: F) -> Result<(Bytes, Lookup), E>
    where
        F: FnOnce(Option<Vec<String>>) -> Fut,
        Fut: Future<Output = Result<Written, E>>,
    {
        if let Some(page) = self.whole_if_fresh() {
            return Ok((page, Lookup::Hit));
        }
        let _rendering = self.rendering.lock().await;
        if let Some(page) = self.whole_if_fresh() {
            return Ok((page, Lookup::Hit));
        }
        // Taken before reading: a change that commits during the read marks its post
        // stale again, so this page is never served as current after it.
        let reading = Reading::start(self);
        let (ids, lookup) = match &reading.stale {
            Stale::Everything => (None, Lookup::Miss),
            Stale::Posts(posts) => (Some(posts.iter().cloned().collect()), Lookup::Patch),
        };
        // A failed read, or one abandoned (its request went away), leaves what it took
        // stale (`Reading`'s drop).
        let written = read(ids).await?;
        Ok((reading.patch(written), lookup))
    }

    /// A page other than the whole view: as cached, or rendered by `render`.
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

    fn whole_if_fresh(&self) -> Option<Bytes> {
        let whole = self.lock_whole();
        (whole.stale.is_empty() && !whole.reading).then(|| whole.page.clone())
    }

    // A panic while holding these locks leaves nothing half-done that a later reader
    // could trust less than the data itself: the state is always whole between calls.
    fn lock_whole(&self) -> MutexGuard<'_, Whole> {
        self.whole
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_own(&self) -> MutexGuard<'_, Own> {
        self.own
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

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
        cache.changed("p1");
        assert_eq!(cache.page(key.clone(), || render("d")).await.unwrap(), "d");
        cache.committed();
        assert_eq!(cache.page(key, || render("e")).await.unwrap(), "e");
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

    /// The database, as far as the whole view's reads go: posts by id, with their place
    /// and title.
    struct Posts(Mutex<BTreeMap<String, (i64, String)>>);

    impl Posts {
        fn new() -> Self {
            Self(Mutex::new(BTreeMap::new()))
        }

        fn set(&self, position: i64, id: &str, title: &str) {
            let post = (position, title.to_owned());
            self.0.lock().unwrap().insert(id.to_owned(), post);
        }

        /// Reads when called, as a statement reads its snapshot when it starts.
        fn read(&self, ids: Option<Vec<String>>) -> std::future::Ready<Result<Written, ()>> {
            let posts = self.0.lock().unwrap();
            let mut read: Vec<(i64, &str, &str)> = posts
                .iter()
                .filter(|(id, _)| ids.as_ref().is_none_or(|ids| ids.contains(id)))
                .map(|(id, (position, title))| (*position, id.as_str(), title.as_str()))
                .collect();
            read.sort_by_key(|(position, _, _)| *position);
            std::future::ready(Ok(crate::store::test_written(&read)))
        }
    }

    async fn whole(cache: &ViewCache, db: &Posts) -> serde_json::Value {
        let page = cache.whole(|ids| db.read(ids)).await.unwrap();
        serde_json::from_slice(&page).unwrap()
    }

    fn titles(view: &serde_json::Value) -> Vec<(String, String)> {
        view.as_object()
            .unwrap()
            .iter()
            .map(|(id, post)| (id.clone(), post["title"].as_str().unwrap().to_owned()))
            .collect()
    }

    fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(id, title)| (id.to_string(), title.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn the_whole_view_reads_again_only_what_changed_and_keeps_creation_order() {
        let cache = ViewCache::default();
        let db = Posts::new();
        db.set(2, "p2", "two");
        db.set(1, "p1", "one");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one"), ("p2", "two")])
        );
        // Changes it was not told of are not read: the page is reused.
        db.set(1, "p1", "one, edited unannounced");
        db.set(3, "p3", "three");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one"), ("p2", "two")])
        );
        // Told of p3 only: p3 is read, p1 is not.
        cache.changed("p3");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one"), ("p2", "two"), ("p3", "three")])
        );
        // Everything: read whole.
        cache.invalidate();
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[
                ("p1", "one, edited unannounced"),
                ("p2", "two"),
                ("p3", "three")
            ])
        );
        // A post that is gone from the database leaves the view when it is named.
        db.0.lock().unwrap().remove("p2");
        cache.changed("p2");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, edited unannounced"), ("p3", "three")])
        );
    }

    #[tokio::test]
    async fn what_the_consumer_applies_is_stale_from_its_commit_not_before() {
        let cache = ViewCache::default();
        let db = Posts::new();
        db.set(1, "p1", "one");
        whole(&cache, &db).await;
        // Applying: not committed yet, so a reader must not cache it as current.
        cache.applying(1, "p1");
        db.set(1, "p1", "one, applied");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one")])
        );
        cache.committed();
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, applied")])
        );
        cache.applying_everything();
        db.set(2, "p2", "two");
        cache.committed();
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, applied"), ("p2", "two")])
        );
    }

    #[tokio::test]
    async fn hearing_its_own_committed_change_announced_reads_nothing_again() {
        let cache = ViewCache::default();
        let db = Posts::new();
        db.set(1, "p1", "one");
        cache.applying(7, "p1");
        cache.committed();
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one")])
        );
        // Its own announcement: already known, not read again (the edit below is not
        // announced, so a read would show it).
        db.set(1, "p1", "one, edited unannounced");
        cache.heard(7, "p1");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one")])
        );
        // Another replica's change to the same post: read again.
        cache.heard(8, "p1");
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, edited unannounced")])
        );
    }

    #[tokio::test]
    async fn a_change_during_a_read_or_a_failed_read_leaves_the_post_stale() {
        let cache = ViewCache::default();
        let db = Posts::new();
        db.set(1, "p1", "one");
        whole(&cache, &db).await;
        cache.changed("p1");
        cache
            .whole(|ids| {
                // The read saw p1 before its change committed (and was announced).
                let read = db.read(ids);
                db.set(1, "p1", "one, changed");
                cache.changed("p1");
                read
            })
            .await
            .unwrap();
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, changed")])
        );

        cache.changed("p1");
        db.set(1, "p1", "one, after a failed read");
        let failed = cache.whole(|_| async { Err::<Written, ()>(()) }).await;
        assert!(failed.is_err());
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, after a failed read")])
        );
    }

    /// A cache that served p1 as "one", then heard that p1 changed to "one, changed".
    async fn p1_cached_then_changed() -> (ViewCache, Posts) {
        let cache = ViewCache::default();
        let db = Posts::new();
        db.set(1, "p1", "one");
        whole(&cache, &db).await;
        db.set(1, "p1", "one, changed");
        cache.changed("p1");
        (cache, db)
    }

    #[tokio::test]
    async fn a_reader_arriving_while_another_reads_the_change_waits_for_it_not_the_old_page() {
        use futures_util::FutureExt;
        let (cache, db) = p1_cached_then_changed().await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut first = Box::pin(cache.whole(|ids| async {
            let _ = released.await;
            db.read(ids).await
        }));
        assert!(
            (&mut first).now_or_never().is_none(),
            "the first reader is reading"
        );
        let mut second = Box::pin(cache.whole(|ids| db.read(ids)));
        assert!(
            (&mut second).now_or_never().is_none(),
            "the second reader was served the page from before the change"
        );
        release.send(()).unwrap();
        let (first, second) = tokio::join!(first, second);
        for page in [first.unwrap(), second.unwrap()] {
            let view: serde_json::Value = serde_json::from_slice(&page).unwrap();
            assert_eq!(titles(&view), expected(&[("p1", "one, changed")]));
        }
    }

    #[tokio::test]
    async fn a_read_abandoned_halfway_leaves_what_it_took_stale() {
        use futures_util::FutureExt;
        let (cache, db) = p1_cached_then_changed().await;
        // Its request went away while it read: the server drops the handler.
        let mut abandoned =
            Box::pin(cache.whole(|_| std::future::pending::<Result<Written, ()>>()));
        assert!((&mut abandoned).now_or_never().is_none());
        drop(abandoned);
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, changed")]),
            "the next reader was served the page from before the change"
        );
    }

    #[tokio::test]
    async fn a_polled_view_is_patched_ahead_of_its_next_poll_and_an_unpolled_one_is_not() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let cache = Arc::new(ViewCache::default());
        let db = Arc::new(Posts::new());
        let reads = Arc::new(AtomicUsize::new(0));
        db.set(1, "p1", "one");
        whole(&cache, &db).await;
        let patcher = tokio::spawn({
            let (cache, db, reads) = (cache.clone(), db.clone(), reads.clone());
            async move {
                cache
                    .keep_patched(|ids| {
                        reads.fetch_add(1, Ordering::SeqCst);
                        db.read(ids)
                    })
                    .await
            }
        });
        db.set(1, "p1", "one, changed");
        cache.changed("p1");
        let mut turns = 0;
        while cache.whole_if_fresh().is_none() {
            turns += 1;
            assert!(turns < 1_000, "the polled view was not patched ahead");
            tokio::task::yield_now().await;
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Nobody read it since: the next change waits for its reader.
        db.set(1, "p1", "one, again");
        cache.changed("p1");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(cache.whole_if_fresh().is_none());
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(
            titles(&whole(&cache, &db).await),
            expected(&[("p1", "one, again")])
        );
        patcher.abort();
    }

    #[tokio::test]
    async fn a_patched_page_is_byte_for_byte_the_page_written_whole() {
        let cache = ViewCache::default();
        let db = Posts::new();
        // A fixed pseudo-random run of announced changes: new posts, edits anywhere.
        let mut seed: u64 = 0x5eed;
        for step in 0..300_i64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let known = db.0.lock().unwrap().len() as i64;
            let position = if known == 0 || seed.is_multiple_of(3) {
                known + 1
            } else {
                (seed >> 33) as i64 % known + 1
            };
            let id = format!("p{position}");
            db.set(position, &id, &format!("title \"{step}\" é"));
            if seed.is_multiple_of(7) {
                cache.invalidate();
            } else {
                cache.changed(&id);
            }
            let page = cache.whole(|ids| db.read(ids)).await.unwrap();
            let written_whole = db.read(None).into_inner().unwrap();
            assert_eq!(page, written_whole.text, "step {step}");
        }
    }

    #[test]
    fn too_many_stale_posts_are_everything() {
        let mut stale = Stale::default();
        for n in 0..=MAX_STALE_POSTS {
            stale.add(&format!("p{n}"));
        }
        assert_eq!(stale, Stale::Everything);
    }
}
