import { ClerkProvider } from '@clerk/nextjs';

// Render every page per request: keys come from the environment of `next start`, not of
// `next build`, and every page shows the auth state of its own request.
export const dynamic = 'force-dynamic';

export const metadata = { title: 'portier test app' };

export default function RootLayout({ children }) {
  const publishableKey =
    process.env.CLERK_PUBLISHABLE_KEY || process.env.NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY;
  return (
    <html lang="en">
      <body>
        <ClerkProvider publishableKey={publishableKey} telemetry={false}>
          <nav>
            <a href="/">home</a> <a href="/dashboard">dashboard</a>{' '}
            <a href="/images/generate">generate</a> <a href="/pricing">pricing</a>{' '}
            <a href="/sign-in">sign-in</a>
          </nav>
          {children}
        </ClerkProvider>
      </body>
    </html>
  );
}
