import { auth } from '@clerk/nextjs/server';

// JSON view of what Clerk saw, for non-document requests (Bearer tokens, fetch()).
export async function GET() {
  const { userId, sessionId, has } = await auth();
  return Response.json({
    userId: userId ?? null,
    sessionId: sessionId ?? null,
    pro: Boolean(userId) && has({ plan: 'pro' }),
  });
}
