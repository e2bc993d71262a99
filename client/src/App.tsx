import { TITLE_MAX } from './api';
import { ConnectionBadge } from './components/ConnectionBadge';
import { PostList } from './components/PostList';
import { TextForm } from './components/TextForm';
import { useMicroblog, type MicroblogOptions } from './useMicroblog';

export function App(options: MicroblogOptions) {
  const { state, createPost, addComment, loadEarlierComments, loadOlder, reload } = useMicroblog(options);
  return (
    <div className="page">
      <header className="masthead">
        <h1 className="masthead__title">
          <span className="masthead__logo" aria-hidden="true" />
          Microblog
        </h1>
        <ConnectionBadge connection={state.connection} />
      </header>
      <main className="content">
        <section className="panel" aria-labelledby="new-post-heading">
          <h2 id="new-post-heading" className="section-title">
            New post
          </h2>
          <TextForm
            field="title"
            label="Title"
            placeholder="What’s on your mind?"
            submitLabel="Create post"
            busyLabel="Creating…"
            max={TITLE_MAX}
            onSubmit={createPost}
          />
        </section>
        <section aria-labelledby="posts-heading" aria-busy={!state.loaded}>
          <h2 id="posts-heading" className="section-title">
            Posts
          </h2>
          <PostList
            state={state}
            onComment={addComment}
            onEarlierComments={loadEarlierComments}
            onLoadOlder={loadOlder}
            onReload={reload}
          />
        </section>
      </main>
      <footer className="footer">
        Comments are moderated; results appear here as soon as they’re decided.
      </footer>
    </div>
  );
}
