import { auth } from '@clerk/nextjs/server';

export default async function Home() {
  const { userId } = await auth();
  return (
    <main>
      <h1 id="page">home</h1>
      <p id="signed-in">{userId ? 'signed-in' : 'signed-out'}</p>
      <p id="user">{userId ?? 'signed-out'}</p>
    </main>
  );
}
