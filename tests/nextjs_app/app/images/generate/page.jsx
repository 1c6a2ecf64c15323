import { auth } from '@clerk/nextjs/server';

// The "pro" page: Portier gates it, the page only reports what Clerk's has() says.
export default async function Generate() {
  const { userId, has } = await auth();
  const pro = Boolean(userId) && has({ plan: 'pro' });
  return (
    <main>
      <h1 id="page">generate</h1>
      <p id="user">{userId ?? 'signed-out'}</p>
      <p id="pro">{pro ? 'pro:true' : 'pro:false'}</p>
    </main>
  );
}
